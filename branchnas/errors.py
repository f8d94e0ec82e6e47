"""The one user-facing error type.

Library code raises :class:`BranchnasError` for bad input (a malformed file, an unknown
name, an impossible budget). Its message is a single line that names the problem and the
fix; the CLI prints it as ``error: <message>`` and exits with status 2.
"""

__all__ = ["BranchnasError"]


class BranchnasError(ValueError):
    """Bad input a user can fix; the message is one line naming the problem and the fix."""
