"""Writing files so that a crash, a kill or a full disk never leaves half a file under a real name.

Every file the project writes goes through :func:`atomic_write`: the content is written to a
temporary name in the target folder, flushed and fsynced, renamed over the target, and the
folder is fsynced so that the rename itself survives a power loss. On any failure the
temporary file is removed and the previous file, if any, stays as it was.
"""
import contextlib
import errno
import os
import shutil

__all__ = ["atomic_write", "write_text", "write_bytes", "WriteError", "TEMP_MARK"]

# Temporary names contain this mark, so that readers (and kill tests) can recognise them.
TEMP_MARK = ".tmp-"


class WriteError(OSError):
    """A file could not be written (full disk, no permission...); the message is one line."""


def _fsync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sync_tree(path):
    """fsync a file, or every file of a folder and the folder itself."""
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for name in files:
                _sync_tree(os.path.join(root, name))
            _fsync_folder(root)
        return
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _explain(exc, path):
    """One line for the failures a user can fix."""
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EFBIG: "the file is larger than the system allows",
              errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EROFS: "the file system is read-only"}.get(exc.errno)
    reason = reason or (exc.strerror or type(exc).__name__)
    return WriteError(exc.errno, f"cannot write '{path}': {reason}; free space or choose "
                                 f"another folder (the previous file, if any, is unchanged)")


def atomic_write(path, write, suffix=""):
    """Create ``path`` through ``write(tmp_path)``, which writes the whole file (or folder).

    ``suffix`` ends the temporary name (MindSpore appends ``.ckpt`` to other names). Returns
    ``path``. Raises :class:`WriteError` (one line) for a full disk, a missing permission or
    a file-size limit; ``path`` is then unchanged and no temporary file is left.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}{TEMP_MARK}{os.getpid()}{suffix}")
    try:
        os.makedirs(folder, exist_ok=True)
        write(tmp)
        _sync_tree(tmp)
        if os.path.isdir(tmp) and os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_folder(folder)
    except OSError as exc:
        _remove(tmp)
        if isinstance(exc, WriteError):
            raise
        raise _explain(exc, path) from None
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(path):
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def write_bytes(path, data):
    """Write ``data`` to ``path`` atomically."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_write(path, write)


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))
