"""The one error path for the file system: an OS failure becomes one line naming the path and the fix.

:func:`fs_error` maps an :class:`OSError` (permission, not a directory, missing parent,
read-only, no space left, ...) or torch's serializer failure (``[enforce fail at
inline_container.cc:...]``, which is what a full disk looks like inside ``torch.save``) to a
:class:`~branchnas.errors.FileSystemError`. :func:`check_writable_dir` proves before any work
that an output directory can be created and written, leaving nothing behind.

Example:
    >>> import errno
    >>> str(fs_error(OSError(errno.ENOSPC, "No space left on device", "/data/x.pt")))
    'no space left on the device holding /data/x.pt; free some space or write elsewhere (--out)'
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

from .errors import FileSystemError

__all__ = ["fs_error", "is_fs_failure", "check_writable_dir"]

PathLike = Union[str, "os.PathLike[str]"]

_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)


def is_fs_failure(exc: BaseException) -> bool:
    """True for an OSError, or torch's serializer error about a failed write (a full disk)."""
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "inline_container.cc" in text or "PytorchStreamWriter failed" in text
        or "file write failed" in text)


def fs_error(exc: BaseException, path: Optional[PathLike] = None) -> FileSystemError:
    """The one-line error for a failed file-system operation.

    Args:
        exc: the OSError (or torch's serializer RuntimeError, see :func:`is_fs_failure`).
        path: the path concerned when ``exc`` does not name it (e.g. torch's error).

    Returns:
        A :class:`FileSystemError` naming the path and what to do.
    """
    if isinstance(exc, FileSystemError):
        return exc
    if path is None:
        path = getattr(exc, "filename", None)
    where = str(path) if path is not None else "a file"
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if code is None and not isinstance(exc, OSError):
        code = errno.ENOSPC  # torch's "enforce fail at inline_container.cc": the write failed
    if code in _NO_SPACE:
        msg = f"no space left on the device holding {where}; free some space or write elsewhere (--out)"
    elif code in (errno.EACCES, errno.EPERM):
        msg = f"permission denied for {where}; choose a location you can write (--out) or fix its permissions"
    elif code == errno.EROFS:
        msg = f"{where} is on a read-only file system; write elsewhere (--out)"
    elif code == errno.ENOTDIR:
        msg = f"a part of {where} is a regular file, not a directory; choose another path"
    elif code == errno.ENOENT:
        msg = f"{where} does not exist (or its parent directory is missing); check the path"
    elif code == errno.EEXIST:
        msg = f"{where} exists and is in the way (a file where a directory belongs?); remove it or choose another path"
    elif code == errno.EISDIR:
        msg = f"{where} is a directory where a file was expected; give a file path"
    elif code == errno.ENAMETOOLONG:
        msg = f"the path {where} is too long; choose a shorter one"
    else:
        reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        msg = f"cannot access {where} ({reason}); check the path and the device"
    return FileSystemError(msg)


def check_writable_dir(path: PathLike, option: str = "--out") -> None:
    """Prove that directory ``path`` can be created (if missing) and written, creating nothing.

    The nearest existing ancestor must be a directory in which a temp file can be made; the
    temp file is deleted at once.

    Args:
        path: the output directory.
        option: the command-line option that names it, for the message.

    Raises:
        FileSystemError: naming the path and the fix.
    """
    p = Path(path).expanduser()
    probe = p
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: creating through it would fail
            raise FileSystemError(f"{option} {p}: {probe} is a broken symbolic link; choose another path")
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if not probe.is_dir():
        if probe == p:
            raise FileSystemError(f"{option} {p} is a file, not a directory; choose another {option}")
        raise FileSystemError(f"{option} {p}: {probe} is a regular file, not a directory; choose another {option}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".branchnas-write-test.", dir=str(probe))
    except OSError as exc:
        if getattr(exc, "errno", None) in _NO_SPACE:
            raise fs_error(exc, probe) from None
        raise FileSystemError(
            f"{option} {p} cannot be written (creating a file in {probe}: {exc.strerror or exc}); "
            f"choose a writable {option}"
        ) from None
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass
