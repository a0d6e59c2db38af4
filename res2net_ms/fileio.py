"""Files: written so that a crash, a kill or a full disk never leaves half a file under a real
name, checked by their sha256, and the one cache folder every cache of the package lives in.

Every file the project writes goes through :func:`atomic_write`: the content is written to a
temporary name in the target folder, flushed and fsynced, renamed over the target, and the
folder is fsynced so that the rename itself survives a power loss. On any failure the
temporary file is removed and the previous file, if any, stays as it was.
"""
import contextlib
import errno
import hashlib
import os
import re
import shutil

__all__ = ["atomic_write", "write_text", "write_bytes", "remove_stale_temporaries", "WriteError",
           "TEMP_MARK", "ENV_CACHE_DIR", "cache_folder", "sha256_file"]

ENV_CACHE_DIR = "R2N_CACHE_DIR"

# Temporary names contain this mark and the writer's process id, so that readers (and kill
# tests) recognise them and leftovers of killed writers can be removed.
TEMP_MARK = ".tmp-"
_TEMP_NAME = re.compile(re.escape(TEMP_MARK) + r"(\d+)")


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
    prefix = f".{name}{TEMP_MARK}{os.getpid()}"
    tmp = os.path.join(folder, prefix + suffix)
    try:
        os.makedirs(folder, exist_ok=True)
        write(tmp)
        _sync_tree(tmp)
        if os.path.isdir(tmp) and os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_folder(folder)
    except OSError as exc:
        _remove_temporaries(folder, prefix)
        if isinstance(exc, WriteError):
            raise
        raise _explain(exc, path) from None
    except BaseException:
        _remove_temporaries(folder, prefix)
        raise
    return path


def _remove_temporaries(folder, prefix):
    """Remove the temporary file, and any the writer made beside it from its name (MindSpore
    writes ``<name>.tmp`` first)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if entry.name.startswith(prefix):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.remove(entry.path)


def write_bytes(path, data):
    """Write ``data`` to ``path`` atomically."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_write(path, write)


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(folder):
    """Remove the temporary files that writers killed mid-write left in ``folder`` (their
    process is gone); returns their names."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for entry in os.scandir(folder):
        match = _TEMP_NAME.search(entry.name)
        if match and not _alive(int(match.group(1))):
            _remove_temporaries(folder, entry.name)
            removed.append(entry.name)
    return removed


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def cache_folder(cache_dir=None):
    """The cache folder: ``cache_dir``, else ``$R2N_CACHE_DIR``, else ``~/.cache/res2net_ms``.
    The weights, the compiled graphs and the CPU kernels all live below it, so one variable
    moves them all."""
    folder = cache_dir or os.environ.get(ENV_CACHE_DIR) or os.path.join(
        os.path.expanduser("~"), ".cache", "res2net_ms")
    return os.path.abspath(os.path.expanduser(os.fspath(folder)))


def sha256_file(path):
    """The sha256 (hex) of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
