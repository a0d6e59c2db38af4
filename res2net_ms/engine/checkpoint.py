"""Training checkpoints: one MindSpore ``.ckpt`` holding everything a run needs to continue.

A training checkpoint holds the network parameters under their own names (so any MindSpore
loader reads it as plain weights), the optimizer state (``global_step``, ``moments.*``,
``adam_m.*`` ...), the EMA weights (``ema.*``, ``ema_updates``), the loss-scale state and
metadata (``meta.*``): format, epoch, global step, best top-1 and its epoch, model, whether
EMA weights are present, the resolved config as YAML and the class-folder names (JSON). Every file is written through
:func:`res2net_ms.ckpt.save_ckpt`, so a crash never leaves a truncated checkpoint under a
real name.
"""
import json
import os
import re
import shutil

import numpy as np
from mindspore import Tensor, nn

from ..ckpt import CheckpointReadError, load_ckpt, save_ckpt
from ..convert import load_into
from ..fileio import TEMP_MARK, atomic_write
from ..hub import WeightsError, pretrained_path

__all__ = ["CheckpointError", "FORMAT", "CheckpointKeeper", "state_parameters",
           "save_checkpoint_atomic", "read_checkpoint_meta", "checkpoint_classes",
           "training_checkpoints", "newest_checkpoint", "load_training_state",
           "load_weights", "pretrained_file"]

FORMAT = "res2net_ms.train/1"
# epoch: epochs completed; step_in_epoch: steps done in the next epoch (step checkpoints);
# epoch_*: that partial epoch's running statistics; val_top1: this checkpoint's validation.
_INT_META = ("epoch", "global_step", "best_epoch", "has_ema", "step_in_epoch",
             "epoch_loss_count", "epoch_skipped")
_FLOAT_META = ("best_top1", "val_top1", "epoch_loss_sum")
_STR_META = ("format", "model", "config", "classes")
# Stored as "meta.<key>": the optimizer already has a parameter called "global_step".
_PREFIX = "meta."
META_KEYS = tuple(_PREFIX + k for k in _INT_META + _FLOAT_META + _STR_META)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for what was asked (missing, wrong model, no EMA)."""


def state_parameters(network, optimizer=None, train_step=None, ema=None):
    """Every Parameter a training checkpoint must hold, without duplicates.

    The learning-rate table is left out: it is rebuilt from the config, and the position in
    it is the optimizer's ``global_step``.
    """
    params, seen = [], set()

    def add(p):
        if p.name not in seen:
            seen.add(p.name)
            params.append(p)

    for p in network.get_parameters():
        add(p)
    if optimizer is not None:
        skip = {id(p) for p in network.get_parameters()}
        lr = getattr(optimizer, "learning_rate", None)
        skip |= {id(p) for p in lr.get_parameters()} if isinstance(lr, nn.Cell) else {id(lr)}
        for _, p in optimizer.parameters_and_names():
            if id(p) not in skip:
                add(p)
    if train_step is not None:
        add(train_step.scale_sense)
        add(train_step.good_steps)
        if train_step.accumulation_steps > 1:
            for p in train_step.accum:
                add(p)
            add(train_step.micro_steps)
    if ema is not None:
        for p in ema.ema_weights:
            add(p)
        add(ema.updates)
    return params


def save_checkpoint_atomic(path, params, meta):
    """Write ``params`` and ``meta`` to ``path`` through a temporary file and a rename."""
    append = {}
    for key, value in meta.items():
        if key in _INT_META:
            value = int(value)
        elif key in _FLOAT_META:
            value = float(value)
        else:
            value = str(value)
        append[_PREFIX + key] = value
    return save_ckpt({p.name: p for p in params}, path, append_dict=append)


def _meta_from(param_dict):
    meta = {}
    for stored in META_KEYS:
        if stored not in param_dict:
            continue
        key, value = stored[len(_PREFIX):], param_dict[stored]
        if key in _STR_META:
            meta[key] = str(value)
        else:
            number = value.asnumpy().item()
            meta[key] = int(number) if key in _INT_META else float(number)
    return meta


def read_checkpoint_meta(path):
    """The metadata of a training checkpoint, or None for any other file (or plain weights)."""
    if not str(path).endswith(".ckpt") or not os.path.isfile(path):
        return None
    try:
        values = load_ckpt(path, names=META_KEYS)
    except CheckpointReadError:
        return None
    meta = _meta_from(values)
    return meta if meta.get("format") == FORMAT else None


def training_checkpoints(folder):
    """``{path: meta}`` of the complete training checkpoints of this project in ``folder``
    (temporary files of an interrupted write are not complete checkpoints)."""
    found = {}
    if not os.path.isdir(folder):
        return found
    for name in sorted(os.listdir(folder)):
        if name.endswith(".ckpt") and TEMP_MARK not in name:
            path = os.path.join(folder, name)
            meta = read_checkpoint_meta(path)
            if meta is not None:
                found[path] = meta
    return found


def newest_checkpoint(folder):
    """The training checkpoint in ``folder`` that is furthest into its run, or None."""
    found = training_checkpoints(folder)
    if not found:
        return None
    return max(found, key=lambda p: (found[p]["global_step"], os.path.getmtime(p)))


def checkpoint_classes(path):
    """The class-folder names a training checkpoint was trained on (index order), or None."""
    meta = read_checkpoint_meta(path) or {}
    return json.loads(meta["classes"]) if meta.get("classes") else None


def _load_dict(path):
    try:
        return load_ckpt(path)
    except CheckpointReadError as exc:
        raise CheckpointError(f"cannot read checkpoint: {exc}") from None


def _assign(param, value):
    data = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
    param.set_data(Tensor(data.reshape(param.shape), dtype=param.dtype))


def load_training_state(path, params, model=None, num_classes=None):
    """Load a training checkpoint into ``params`` (all of them must be there); return its meta.

    Checks before touching anything that the file is a training checkpoint of the same model
    and class count, so a wrong ``--resume`` fails with one clear message.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"resume checkpoint '{path}' does not exist")
    values = _load_dict(path)
    meta = _meta_from(values)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a training checkpoint of this project (no "
                              f"optimizer state or epoch): use --ckpt_path to start from its "
                              f"weights instead of --resume")
    if model is not None and meta.get("model") != model:
        raise CheckpointError(f"'{path}' was trained as {meta.get('model')}, not {model}")
    missing = [p.name for p in params if p.name not in values]
    if missing:
        raise CheckpointError(f"'{path}' lacks {len(missing)} of the run's state entries (e.g. "
                              f"{', '.join(missing[:3])}): was it saved with another model, "
                              f"optimizer or EMA setting?")
    wrong = [p for p in params if tuple(values[p.name].shape) != tuple(p.shape)]
    if wrong:
        p = wrong[0]
        hint = f" (trained with another num_classes than {num_classes}?)" if num_classes else ""
        raise CheckpointError(f"'{path}': {p.name} has shape {tuple(values[p.name].shape)}, the "
                              f"run needs {tuple(p.shape)}{hint}")
    for p in params:
        _assign(p, values[p.name])
    return meta


def load_weights(network, path, model_name, use_ema=False):
    """Load weights for fine-tuning or evaluation through the converter; return log notes.

    Reads training checkpoints of this project (their ``ema.*`` weights with ``use_ema``),
    converted ``.ckpt`` files and PyTorch/safetensors/mindcv files alike. A classifier whose
    size differs from the checkpoint's is re-initialised (fine-tuning to another
    ``num_classes``), and the notes say so.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    meta = read_checkpoint_meta(path)
    if use_ema and not (meta or {}).get("has_ema"):
        raise CheckpointError(f"'{path}' has no EMA weights (not a training checkpoint made "
                              f"with --ema True): evaluate it with --ema False")
    try:
        report = load_into(network, path, model_name=model_name, use_ema=use_ema)
    except ValueError as exc:
        raise CheckpointError(" ".join(str(exc).split())) from None
    if meta is not None:
        source = (f"{'EMA weights' if use_ema else 'weights'} of epoch {meta.get('epoch')} "
                  f"from training checkpoint '{path}'")
    else:
        source = f"weights from '{path}' ({report.layout} layout)"
    return [f"loaded {source}"] + report.notes


def pretrained_file(model_name, cache_dir=None):
    """The official weights of ``model_name``, converted and cached by :mod:`res2net_ms.hub`."""
    try:
        return pretrained_path(model_name, cache_dir)
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from None


class CheckpointKeeper:
    """Where and when checkpoints are written: ``last.ckpt`` at every epoch end (and every
    ``ckpt_save_steps`` steps), ``best.ckpt`` on a new best validation top-1, and
    ``<model>-eNNNN.ckpt`` every ``interval`` epochs, of which ``keep_max`` are kept by
    ``policy``: ``latest_k`` the newest, ``top_k`` the best validation top-1, None all (as
    mindcv's ``ckpt_save_policy``). Each is written once; the others are hard links to it (a
    copy where links are not supported), so saving stays cheap and atomic.
    """

    def __init__(self, save_dir, model_name, interval=1, keep_max=10, policy="latest_k"):
        self.save_dir = save_dir
        self.model_name = model_name
        self.interval = interval
        self.keep_max = keep_max
        self.policy = policy
        self._pattern = re.compile(re.escape(model_name) + r"-e(\d{4,})\.ckpt$")

    @property
    def last(self):
        return os.path.join(self.save_dir, "last.ckpt")

    @property
    def best(self):
        return os.path.join(self.save_dir, "best.ckpt")

    def numbered(self, epoch):
        return os.path.join(self.save_dir, f"{self.model_name}-e{epoch:04d}.ckpt")

    def save_step(self, params, meta):
        """A checkpoint inside an epoch: ``last.ckpt`` only."""
        return [save_checkpoint_atomic(self.last, params, meta)]

    def save(self, params, meta, epoch, is_best):
        """Write this epoch's checkpoints; return the paths written."""
        written = [save_checkpoint_atomic(self.last, params, meta)]
        if is_best:
            written.append(self._link(self.last, self.best))
        if epoch % self.interval == 0:
            written.append(self._link(self.last, self.numbered(epoch)))
            self._prune()
        return written

    def _link(self, source, target):
        def link(tmp):
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
        return atomic_write(target, link)

    def _prune(self):
        if self.policy is None:
            return
        found = [name for name in os.listdir(self.save_dir) if self._pattern.match(name)]
        if self.policy == "top_k":
            def score(name):
                meta = read_checkpoint_meta(os.path.join(self.save_dir, name)) or {}
                return (meta.get("val_top1", -1.0), name)
        else:
            def score(name):
                return int(self._pattern.match(name).group(1))
        for name in sorted(found, key=score)[:-self.keep_max]:
            os.remove(os.path.join(self.save_dir, name))
