"""Process exit for the command-line tools."""
import logging
import sys


def _quiet_unraisable(unraisable):
    """MindSpore's ``Cell.__del__`` raises while the interpreter shuts down; nothing is lost."""


def exit_process(code):
    """Flush, silence shutdown-time ``Exception ignored in: Cell.__del__`` noise, exit ``code``.

    The interpreter still shuts down normally (no ``os._exit``): under msrun a worker must
    leave the cluster cleanly, or the scheduler reports it as timed out and fails the job.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.unraisablehook = _quiet_unraisable
    sys.exit(code)
