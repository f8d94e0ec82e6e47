"""The one user-facing error type.

Library code raises :class:`BranchnasError` for bad input (a malformed file, an unknown
name, an impossible budget). Its message is a single line that names the problem and the
fix; the CLI prints it as ``error: <message>`` and exits with status 2. Failures of the
file system (permission, not a directory, no space left, ...) become the subclass
:class:`FileSystemError` through :func:`branchnas._fs.fs_error`, the one place that maps them.
"""

__all__ = ["BranchnasError", "FileSystemError"]


class BranchnasError(ValueError):
    """Bad input a user can fix; the message is one line naming the problem and the fix."""


class FileSystemError(BranchnasError):
    """A file or directory could not be read or written; the message names the path and what to do."""
