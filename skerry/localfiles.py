"""The platform's own files on its local disk, each written whole: ``write_private``.

    write_private(data_dir.run / "ports.json", json.dumps(ports))   # 0600
    write_private(folder / "connect.json", text, mode=0o640)         # the folder's group reads it too
    give(path, account)                                             # the caller, after, if the account's

Rules:
- a file is replaced whole or not at all: the data goes to a temporary file in the same
  folder, is flushed to disk (fsync), then renamed over ``path`` (``os.replace``); a reader
  sees the old file or the new one, never a part. On any failure the temporary file is
  removed and ``path`` is as it was;
- the temporary file is created with ``mode`` (``O_CREAT | O_EXCL``, never through a link)
  and set to exactly ``mode`` whatever the umask: the file is never more open than
  ``mode``, not even while it is written;
- the file is this process's (the folder's group where the folder is set-group-ID, as
  ``accounts.share_folder`` makes them); a caller that hands it to an account chowns it
  after (``accounts.give``);
- only the platform's local files: users' files go through the adaptors (``adaptors/atomic.py``).
  No other module writes a local file by a rename (``tests/test_one_way.py`` lists the few
  other renames, each with the reason).
"""

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["write_private"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_private(path: str | os.PathLike, data: bytes | str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` (a ``str`` is written as UTF-8), mode exactly ``mode``.

    TypeError if ``data`` is neither; an ``OSError`` naming ``path`` (its subclass kept:
    FileNotFoundError, PermissionError, ...) if it cannot be written.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{path} is written from bytes or str, not {type(data).__name__}")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = None
    try:
        fd = os.open(tmp, _FLAGS, mode)
        with open(fd, "wb") as f:
            os.fchmod(fd, mode)  # the umask took bits away: put back those asked for, no more
            f.write(data)
            f.flush()
            os.fsync(fd)
        os.replace(tmp, path)
    except BaseException as e:
        if fd is not None:  # ours: a file of that name we did not make is left alone
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            # the file asked for, not the temporary one, is what the reader needs named
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
