"""Reading and writing MindSpore ``.ckpt`` files: one writer and one reader for the project.

The converter (weights) and the engine (training state) both go through these, so every
checkpoint is written atomically (:func:`res2net_ms.fileio.atomic_write`) and every unreadable
file fails with the same one-line :class:`CheckpointReadError`.
"""
import contextlib
import logging
import os

import mindspore as ms
from mindspore import log as ms_log

from .fileio import atomic_write

__all__ = ["CheckpointReadError", "save_ckpt", "load_ckpt"]


class CheckpointReadError(ValueError):
    """The file is not a readable MindSpore checkpoint (missing, truncated, another format)."""


def save_ckpt(weights, path, append_dict=None):
    """Write ``{name: array or Tensor}`` as a MindSpore checkpoint, atomically.

    ``append_dict`` holds extra scalar or string entries (training metadata).
    """
    items = [{"name": k, "data": v if isinstance(v, ms.Tensor) else ms.Tensor(v)}
             for k, v in weights.items()]

    def write(tmp):
        with _quiet_mindspore():
            ms.save_checkpoint(items, tmp, append_dict=append_dict)

    # save_checkpoint appends ".ckpt" to other names, so the temporary name ends with it.
    return atomic_write(path, write, suffix=".ckpt")


@contextlib.contextmanager
def _quiet_mindspore():
    """MindSpore logs a CRITICAL line of its own when a save fails; our error says it in one
    line (its logger is private API: ``mindspore.log._get_logger``)."""
    logger = ms_log._get_logger()
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_ckpt(path, names=None):
    """``{name: Parameter or str}`` of a MindSpore checkpoint (only ``names`` if given)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointReadError(f"checkpoint not found: {path}")
    choice = None if names is None else (lambda name: name in names)
    try:
        return ms.load_checkpoint(path, choice_func=choice)
    except Exception as exc:  # MindSpore raises several types with multi-line messages
        text = " ".join(str(exc).split())
        first = text[:200] if text else type(exc).__name__
        raise CheckpointReadError(f"{path}: not a readable MindSpore checkpoint ({first})") \
            from None
