"""Pretrained weights: the official PyTorch file downloaded once, checked, converted and cached.

``create_model(name, pretrained=True)``, ``--pretrained True`` and
``create_detector(name, pretrained=True)`` end here. The official file (the registry's
``url``, or the same name under ``$R2N_WEIGHTS_URL``) is streamed to a
temporary file in the cache folder with a progress bar and a timeout; its sha256 must begin
with the hex digits in its name (torch.hub's rule, which the official and timm names follow);
it is converted in memory and only the converted MindSpore ``.ckpt`` is cached, written
atomically, so the cache never holds a partial file under a real name. The cache folder is
``cache_dir``, else ``$R2N_CACHE_DIR``, else ``~/.cache/res2net_ms``. A file put there by hand
(under its official name) is used instead of downloading. Under msrun, rank 0 downloads while
the other ranks wait for the cache entry.
"""
import contextlib
import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.parse
import urllib.request

from mindspore.communication import GlobalComm, get_rank
from tqdm import tqdm

from .ckpt import CheckpointReadError, load_ckpt
from .convert import convert_checkpoint
from .fileio import ENV_CACHE_DIR, TEMP_MARK, cache_folder, sha256_file
from .models import get_model_config
from .process import launched_by_launcher

try:
    import fcntl
except ImportError:  # Windows: one process per machine downloads anyway
    fcntl = None

__all__ = ["ENV_WEIGHTS_URL", "WeightsError", "download", "fetch_converted", "hash_prefix",
           "pretrained_path", "weights_url"]

ENV_WEIGHTS_URL = "R2N_WEIGHTS_URL"
_HASH = re.compile(r"-([0-9a-f]+)\.")
_CHUNK = 1 << 20
_logger = logging.getLogger("res2net_ms")


class WeightsError(ValueError):
    """Pretrained weights cannot be had: no published file, a failed or corrupt download."""


def weights_url(weights, url):
    """Where the published file ``weights`` is fetched from: ``$R2N_WEIGHTS_URL`` (a mirror
    holding it under its name) first, else ``url``."""
    base = os.environ.get(ENV_WEIGHTS_URL)
    return base.rstrip("/") + "/" + urllib.parse.quote(weights) if base else url


def hash_prefix(filename):
    """The hex digits a file name promises its sha256 begins with (``name-<hex>.ext``), or None."""
    found = _HASH.search(os.path.basename(filename))
    return found.group(1) if found else None


def download(url, dest, timeout=60.0, progress=True):
    """Stream ``url`` into ``dest`` with a progress bar; return the file's sha256 (hex).

    Raises :class:`WeightsError` when the server cannot be reached, answers with an error,
    stalls for ``timeout`` seconds or closes the connection before the whole file arrived.
    """
    digest, received, total = hashlib.sha256(), 0, None
    request = urllib.request.Request(url, headers={"User-Agent": "res2net_ms"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, \
                open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=os.path.basename(urllib.parse.urlparse(url).path), file=sys.stderr,
                      disable=None if progress else True, leave=False) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except http.client.IncompleteRead as exc:
        received += len(exc.partial)
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(f"cannot download {url} ({' '.join(str(reason).split())})") from None
    if received == 0 or (total is not None and received != total):
        expected = f" of {total}" if total else ""
        raise WeightsError(f"cannot download {url} (the connection closed after {received}"
                           f"{expected} bytes)")
    return digest.hexdigest()


def _usable(path):
    """A complete cache entry: a non-empty file that MindSpore reads as a checkpoint."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    try:
        load_ckpt(path)
    except CheckpointReadError:
        return False
    return True


def _rank():
    """This process's rank when a launcher (msrun, mpirun) started it, else None."""
    if not launched_by_launcher():
        return None
    if GlobalComm.INITED:
        return get_rank()
    for key in ("RANK_ID", "MS_NODE_ID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return None


@contextlib.contextmanager
def _lock(path):
    """An exclusive lock on ``path`` (one downloader per cache entry, across processes)."""
    with open(path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.remove(path)


def _check_hash(name, digest, origin, hint):
    prefix = hash_prefix(name)
    if prefix and not digest.startswith(prefix):
        raise WeightsError(f"sha256 of {origin} begins with {digest[:len(prefix)]}, its name "
                           f"{name} says {prefix}: {hint}")


def _fetch_and_convert(weights, url, convert, target, timeout, progress):
    """Get the published file ``weights`` (put in the cache folder by hand, or downloaded
    from ``url``), check its hash, ``convert(file, target)`` it; a downloaded file is removed
    whatever happens."""
    folder = os.path.dirname(target)
    by_hand = os.path.join(folder, weights)
    if os.path.isfile(by_hand) and os.path.getsize(by_hand) > 0:
        _check_hash(weights, sha256_file(by_hand), by_hand,
                    "the file is corrupt or not the official one: delete it and fetch it again")
        _convert(convert, by_hand, weights, target)
        return
    url = weights_url(weights, url)
    part = os.path.join(folder, f".{weights}{TEMP_MARK}{os.getpid()}")
    _logger.info("downloading %s", url)
    try:
        try:
            digest = download(url, part, timeout, progress)
        except WeightsError as exc:
            raise WeightsError(f"{exc}: fetch it yourself and put it at {by_hand} (or set "
                               f"{ENV_WEIGHTS_URL} to a mirror), then run again") from None
        _check_hash(weights, digest, url,
                    "the download is corrupt or not the official file; nothing was cached")
        _convert(convert, part, weights, target)
    finally:
        _remove(part)


def _convert(convert, source, weights, target):
    try:
        report = convert(source, target)
    except ValueError as exc:
        raise WeightsError(f"{weights} does not convert: {' '.join(str(exc).split())}") from None
    _logger.info("converted %s (%d tensors) into %s", weights, report.mapped, target)


def _remove(path):
    with contextlib.suppress(OSError):
        os.remove(path)


def _wait_for(target, rank, timeout):
    """Ranks other than 0 wait for rank 0 to put the converted weights in the cache."""
    _logger.info("rank %d: waiting for rank 0 to download and convert %s", rank,
                 os.path.basename(target))
    deadline = time.monotonic() + timeout
    while not _usable(target):
        if time.monotonic() > deadline:
            raise WeightsError(
                f"rank {rank} waited {timeout:.0f} s for rank 0 to write {target}: see rank 0's "
                f"log; on several machines, put {ENV_CACHE_DIR} on a shared folder or fetch "
                f"the weights on each machine first")
        time.sleep(1.0)
    return target


def pretrained_path(model_name, cache_dir=None, timeout=60.0, progress=True,
                    wait_timeout=3600.0):
    """The cached MindSpore ``.ckpt`` of ``model_name``'s official weights, made on first use.

    Args:
        model_name: a zoo name or alias.
        Others: as :func:`fetch_converted`.

    Raises :class:`WeightsError` (one line) when the model has no published weights, the
    file cannot be downloaded (the message says which file to fetch and where to put it), or
    its sha256 does not match its name.
    """
    cfg = get_model_config(model_name)
    if not cfg.weights:
        where = cfg.extra.get("weights_note", "")
        raise WeightsError(f"{cfg.name} has no downloadable weights{' ' + where if where else ''}"
                           f": train it, or pass a checkpoint file")

    def convert(source, target):
        return convert_checkpoint(source, cfg.name, out=target)[1]

    return fetch_converted(cfg.weights, cfg.url, convert, cache_dir, timeout, progress,
                           wait_timeout)


def fetch_converted(weights, url, convert, cache_dir=None, timeout=60.0, progress=True,
                    wait_timeout=3600.0):
    """The cached MindSpore ``.ckpt`` of the published file ``weights``, made on first use.

    Args:
        weights: the published file's name (``<name>-<sha256 prefix>.<ext>``).
        url: where it is published.
        convert: ``convert(file, target)`` writes the ``.ckpt`` and returns the conversion
            report.
        cache_dir: cache folder (default ``$R2N_CACHE_DIR`` or ``~/.cache/res2net_ms``).
        timeout: seconds the download may stall before it is given up.
        progress: show a progress bar (on a terminal).
        wait_timeout: seconds ranks other than 0 wait for rank 0's download under msrun.
    """
    folder = cache_folder(cache_dir)
    target = os.path.join(folder, os.path.splitext(weights)[0] + ".ckpt")
    if _usable(target):
        return target
    rank = _rank()
    if rank not in (None, 0):
        return _wait_for(target, rank, wait_timeout)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the cache folder {folder} ({exc.strerror}): set "
                           f"{ENV_CACHE_DIR} to a writable folder") from None
    with _lock(target + ".lock"):
        if not _usable(target):
            if os.path.exists(target):
                _logger.info("%s is unreadable: making it again", target)
            _fetch_and_convert(weights, url, convert, target, timeout, progress)
    return target
