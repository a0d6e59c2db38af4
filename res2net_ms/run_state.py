"""Training checkpoints: one MindSpore ``.ckpt`` that holds everything a run needs to go on.

It holds the network's parameters under their own names (so any MindSpore loader reads it as
plain weights), the optimizer state (``global_step``, ``moments.*``, ``adam_m.*`` ...), the
EMA weights (``ema.*``, ``ema_updates``), the loss-scale state, and the run's
:class:`RunState` as ``meta.<field>`` entries. This module is the format; the engine writes
and resumes it, :mod:`res2net_ms.weights` and :mod:`res2net_ms.inference` read a checkpoint's
weights, config and class names from it. Files are written through
:func:`res2net_ms.ckpt.save_ckpt`, so a crash never leaves a truncated checkpoint under a
real name.
"""
import dataclasses
import json
import os
from dataclasses import dataclass, field

import numpy as np
from mindspore import Tensor

from .ckpt import CheckpointReadError, load_ckpt, save_ckpt

__all__ = ["CheckpointError", "FORMAT", "RunState", "check_resume", "read_run_state",
           "restore", "save_training_checkpoint"]

FORMAT = "res2net_ms.train/1"
# "meta.": the optimizer already has a parameter called "global_step".
_PREFIX = "meta."


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for what was asked (missing, wrong model, no EMA)."""


@dataclass
class RunState:
    """What a training checkpoint says about its run: the one declaration of its metadata.

    Every field is stored as ``meta.<name>``, typed by its annotation (a list as JSON). The
    first four describe the run; the others say where it stands, and the loop updates them.
    A detector's run keeps its validation box mAP, in percent, in the top-1 fields.
    """

    model: str = ""
    config: str = ""                      # the resolved options, YAML (a valid --config)
    classes: list = field(default_factory=list)  # class-folder names, in label order
    has_ema: bool = False
    epoch: int = 0                        # epochs completed
    global_step: int = 0                  # batches trained on
    step_in_epoch: int = 0                # steps done of the next epoch (step checkpoints)
    epoch_loss_sum: float = 0.0           # the running statistics of that partial epoch
    epoch_loss_count: int = 0
    epoch_skipped: int = 0
    best_top1: float = -1.0               # best validation top-1 so far (-1: none yet)
    best_epoch: int = 0
    val_top1: float = -1.0                # validation top-1 of epoch ``epoch`` (-1: none)
    format: str = FORMAT

    def entries(self):
        """``{"meta.<field>": int, float or str}``, as a checkpoint stores them."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[_PREFIX + f.name] = (json.dumps(list(value)) if f.type is list
                                     else int(value) if f.type is bool else f.type(value))
        return out

    @classmethod
    def from_entries(cls, values):
        """The state stored in a checkpoint's entries, or None when it holds none of ours."""
        if str(values.get(_PREFIX + "format", "")) != FORMAT:
            return None
        found = {}
        for f in dataclasses.fields(cls):
            if _PREFIX + f.name not in values:
                continue  # written by an earlier version: the default
            value = values[_PREFIX + f.name]
            if f.type is list:
                found[f.name] = json.loads(str(value)) if str(value) else []
            elif f.type is str:
                found[f.name] = str(value)
            else:
                found[f.name] = f.type(value.asnumpy().item())
        return cls(**found)


META_KEYS = tuple(_PREFIX + f.name for f in dataclasses.fields(RunState))


def save_training_checkpoint(path, params, state):
    """Write ``params`` and ``state`` to ``path`` through a temporary file and a rename."""
    return save_ckpt({p.name: p for p in params}, path, append_dict=state.entries())


def read_run_state(path):
    """The :class:`RunState` of a training checkpoint; None for any other file."""
    if not str(path).endswith(".ckpt") or not os.path.isfile(path):
        return None
    try:
        return RunState.from_entries(load_ckpt(path, names=META_KEYS))
    except CheckpointReadError:
        return None


def check_resume(path, model):
    """The state of the training checkpoint ``path`` that a run of ``model`` resumes: every
    check that needs no network, so that a wrong ``--resume`` stops before anything is built."""
    if not os.path.isfile(path):
        raise CheckpointError(f"resume checkpoint '{path}' does not exist")
    state = read_run_state(path)
    if state is None:
        raise CheckpointError(f"'{path}' is not a training checkpoint of this project (no "
                              f"optimizer state or epoch): use --ckpt_path to start from its "
                              f"weights instead of --resume")
    if state.model != model:
        raise CheckpointError(f"'{path}' was trained as {state.model}, not {model}")
    return state


def restore(path, params, num_classes=None, ema=False):
    """Load the run's state entries of the training checkpoint ``path`` into ``params``:
    every one must be there with its shape (:func:`check_resume` checked the rest). With
    ``ema`` each parameter takes its moving average (``ema.<name>``) instead."""
    try:
        values = load_ckpt(path)
    except CheckpointReadError as exc:
        raise CheckpointError(f"cannot read checkpoint: {exc}") from None
    prefix = "ema." if ema else ""
    if ema and not any(name.startswith(prefix) for name in values):
        raise CheckpointError(f"'{path}' has no EMA weights (ema.*): it was trained without "
                              f"ema; evaluate it with ema: false")
    missing = [p.name for p in params if prefix + p.name not in values]
    if missing:
        raise CheckpointError(f"'{path}' lacks {len(missing)} of the run's state entries (e.g. "
                              f"{', '.join(prefix + n for n in missing[:3])}): was it saved with "
                              f"another model, optimizer or EMA setting?")
    wrong = [p for p in params if tuple(values[prefix + p.name].shape) != tuple(p.shape)]
    if wrong:
        p = wrong[0]
        hint = f" (trained with another num_classes than {num_classes}?)" if num_classes else ""
        raise CheckpointError(f"'{path}': {p.name} has shape "
                              f"{tuple(values[prefix + p.name].shape)}, the run needs "
                              f"{tuple(p.shape)}{hint}")
    for p in params:
        data = np.asarray(values[prefix + p.name].asnumpy())
        p.set_data(Tensor(data.reshape(p.shape), dtype=p.dtype))
