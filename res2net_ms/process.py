"""Process-level helpers of the command-line tools: launcher detection and a clean exit."""
import logging
import os
import sys

__all__ = ["exit_process", "launched_by_launcher"]

_LAUNCHER_ENV = ("MS_ROLE", "MS_WORKER_NUM", "RANK_TABLE_FILE", "RANK_SIZE",
                 "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def launched_by_launcher():
    """True when msrun, mpirun or a rank table started this process (one of several ranks)."""
    return any(os.environ.get(k) for k in _LAUNCHER_ENV)


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
