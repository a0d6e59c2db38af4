"""Process-level helpers of the command-line tools: launcher detection, the slow-MindSpore
warning, one-line failures and a clean exit."""
import ctypes
import logging
import os
import re
import sys

import mindspore as ms

__all__ = ["BAD_INPUT", "exit_process", "fail", "launched_by_launcher", "release_free_memory",
           "run_command", "warn_slow_mindspore"]

_LAUNCHER_ENV = ("MS_ROLE", "MS_WORKER_NUM", "RANK_TABLE_FILE", "RANK_SIZE",
                 "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def launched_by_launcher():
    """True when msrun, mpirun or a rank table started this process (one of several ranks)."""
    return any(os.environ.get(k) for k in _LAUNCHER_ENV)


def release_free_memory():
    """Hand the heap that is free but still mapped back to the system (glibc's
    ``malloc_trim``; nothing elsewhere). After a graph compile that is about 0.1 GB that would
    otherwise stay under the activations' peak. Returns whether glibc was there to ask."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


# MindSpore releases that run 3x3 convolutions on CPU about 90x slower than 2.8.0 (measured).
_SLOW_ON_CPU = ((2, 9), (2, 10))
_warned_versions = set()


def warn_slow_mindspore(version=None, device_target=None):
    """Warn once per process when this MindSpore is one of the slow CPU releases.

    ``version`` and ``device_target`` default to the installed MindSpore and its current
    device. Returns the warning (None when there is nothing to say, or it was said already).
    """
    if version is None or device_target is None:
        version = version or ms.__version__
        device_target = device_target or ms.get_context("device_target")
    found = re.match(r"(\d+)\.(\d+)", version)
    if (device_target != "CPU" or not found or version in _warned_versions
            or (int(found[1]), int(found[2])) not in _SLOW_ON_CPU):
        return None
    _warned_versions.add(version)
    message = (f"warning: MindSpore {version} runs 3x3 convolutions on CPU about 90x slower "
               f"than 2.8.0: pip install mindspore==2.8.0")
    logging.getLogger("res2net_ms").warning(message)
    return message


def fail(exc, status=2):
    """Print ``exc`` as one ``error:`` line on stderr (MindSpore's messages span lines) and
    return the exit status a command line returns for it."""
    print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
    return status


# What a command reports as bad input (a wrong option, a missing or unreadable file, a missing
# optional package): one line and status 2, not a traceback.
BAD_INPUT = (ValueError, OSError, ImportError)


def run_command(build_parser, run, argv=None, statuses=None):
    """Parse ``argv`` with ``build_parser()`` and ``run(args)``: 0, or one ``error:`` line and
    status 2 for bad input (:data:`BAD_INPUT`), or the status ``statuses`` gives the error's
    type (``{ExportError: 1}``)."""
    args = build_parser().parse_args(argv)
    statuses = statuses or {}
    try:
        run(args)
    except BAD_INPUT as exc:
        return fail(exc)
    except tuple(statuses) as exc:
        return fail(exc, next(s for kind, s in statuses.items() if isinstance(exc, kind)))
    return 0


def _shutdown_hook(default):
    def hook(unraisable):
        """MindSpore's ``Cell.__del__`` raises while the interpreter shuts down: nothing is
        lost, so that one is dropped; every other unraisable error still prints."""
        if getattr(unraisable.object, "__qualname__", "") == "Cell.__del__":
            return
        default(unraisable)
    return hook


def exit_process(code):
    """Flush, silence shutdown-time ``Exception ignored in: Cell.__del__`` noise, exit ``code``.

    The interpreter still shuts down normally (no ``os._exit``): under msrun a worker must
    leave the cluster cleanly, or the scheduler reports it as timed out and fails the job.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.unraisablehook = _shutdown_hook(sys.unraisablehook)
    sys.exit(code)
