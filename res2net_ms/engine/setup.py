"""Setting up a run: input checks, device context, seeds, logging, network, training step.

Everything that can be wrong with the input (config, data folder, checkpoints) is checked by
:func:`check_inputs` before the first graph compiles.
"""
import logging
import os
import random
import sys
from dataclasses import dataclass, field

import mindspore as ms
import numpy as np
from mindcv.loss import create_loss
from mindcv.optim import create_optimizer
from mindcv.scheduler import create_scheduler
from mindcv.utils import amp as mindcv_amp
from mindspore import nn
from mindspore.communication import get_group_size, get_rank, init

from ..config import ConfigError
from ..data import DataError, check_imagefolder
from ..factory import create_model
from ..fileio import remove_stale_temporaries
from ..process import launched_by_launcher, release_free_memory, warn_slow_mindspore
from .checkpoint import (CheckpointError, load_training_state, load_weights, newest_checkpoint,
                         pretrained_file, read_checkpoint_meta, state_parameters,
                         training_checkpoints)
from .train_step import EMA, NetWithLoss, TrainStep

__all__ = ["logger", "setup_logging", "setup_context", "seed_everything", "check_inputs",
           "clear_previous_run", "build_network", "load_start_weights", "weights_source",
           "mixed_precision", "TrainParts", "build_train_step", "RunState", "resume_state"]

logger = logging.getLogger("res2net_ms")


def setup_logging(rank, log_file=None):
    """Log lines on rank 0 only, to stdout and (for training) to ``train.log``."""
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if log_file and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)


def setup_context(args):
    """Device, execution mode and (with ``distribute``) communication; return (rank, size).

    Resolves the ``auto`` options in ``args``: the device is the one this MindSpore build
    targets, AMP is O0 on CPU and O2 elsewhere.
    """
    # MindSpore refuses set_device once a kernel has run, even to the same device.
    if args.device_target not in ("auto", ms.get_context("device_target")):
        ms.set_device(args.device_target)
    args.device_target = ms.get_context("device_target")
    warn_slow_mindspore(device_target=args.device_target)
    if args.amp_level == "auto":
        args.amp_level = "O0" if args.device_target == "CPU" else "O2"
    if args.mode == 0:
        ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": args.jit_level})
    else:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    if args.deterministic and ms.get_context("deterministic") != "ON":
        ms.set_deterministic(True)  # MindSpore refuses a second call in one process
    rank, group_size = 0, 1
    if args.distribute:
        init()
        rank, group_size = get_rank(), get_group_size()
        ms.reset_auto_parallel_context()
        ms.set_auto_parallel_context(device_num=group_size, gradients_mean=True,
                                     parallel_mode=ms.ParallelMode.DATA_PARALLEL)
    return rank, group_size


def seed_everything(seed):
    """The same seed on every rank: data-parallel replicas must start from equal weights."""
    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


def check_inputs(args, for_training):
    """Every input check, before anything is built or compiled; returns the data summary.

    For training it also decides where the run starts (``--resume auto``, mindcv's
    ``ckpt_path`` + ``resume_opt``) and refuses to mix a fresh run into a folder holding
    another run; ``info["notes"]`` are the lines to log once logging is set up.
    """
    if args.distribute and not launched_by_launcher():
        raise ConfigError("distribute is True but no launcher started this process: run it "
                          "under msrun (msrun --worker_num N python train.py ...) or mpirun, "
                          "or pass --distribute False for one device")
    if for_training:
        splits = (args.train_split,) + ((args.val_split,) if args.val_while_train else ())
    else:
        splits = (args.val_split,)
    info = check_imagefolder(args.data_dir, args.num_classes, splits=splits)
    info["notes"] = _setting_notes(args)
    if not for_training:
        return info
    images = info["counts"][args.train_split]
    if args.num_samples:
        images = min(images, args.num_samples)
    if args.drop_remainder and images < args.batch_size:
        raise DataError(f"{images} training images are fewer than batch_size "
                        f"{args.batch_size} with drop_remainder: no training step; lower "
                        f"batch_size")
    info["notes"] += _resolve_resume(args)
    if args.resume:
        if not os.path.isfile(args.resume):
            raise CheckpointError(f"resume checkpoint '{args.resume}' does not exist")
        if read_checkpoint_meta(args.resume) is None:
            raise CheckpointError(f"'{args.resume}' is not a training checkpoint of this project "
                                  f"(no optimizer state or epoch): use --ckpt_path to start "
                                  f"from its weights instead of --resume")
    else:
        _check_fresh_folder(args)
    return info


def _setting_notes(args):
    """mindcv settings that cannot apply here: warn once, go on."""
    notes = []
    if args.dataset_download:
        notes.append("warning: dataset_download is ignored (no download here): the data is "
                     f"read from data_dir '{args.data_dir}'")
    if args.aux_factor:
        notes.append(f"warning: aux_factor {args.aux_factor} is ignored: {args.model} has no "
                     "auxiliary head")
    return notes


def _resolve_resume(args):
    """``--resume auto`` becomes the newest complete checkpoint of ``ckpt_save_dir`` (or a
    fresh start); mindcv's ``ckpt_path`` + ``resume_opt`` becomes ``--resume ckpt_path``."""
    if args.resume_opt and args.ckpt_path and not args.resume:
        args.resume, args.ckpt_path = args.ckpt_path, ""
        return [f"resume_opt: continuing the training checkpoint '{args.resume}'"]
    if args.resume != "auto":
        return []
    args.resume = newest_checkpoint(args.ckpt_save_dir) or ""
    if not args.resume:
        return [f"resume auto: no checkpoint in '{args.ckpt_save_dir}', starting afresh"]
    return [f"resume auto: continuing from '{args.resume}'"]


def _check_fresh_folder(args):
    """A fresh run must not mix its checkpoints with another run's."""
    found = training_checkpoints(args.ckpt_save_dir)
    if found and not args.overwrite:
        path = max(found, key=lambda p: found[p]["global_step"])
        raise ConfigError(
            f"ckpt_save_dir '{args.ckpt_save_dir}' holds another run's checkpoints "
            f"({os.path.basename(path)}: epoch {found[path]['epoch']}): continue it with "
            f"--resume auto, choose another ckpt_save_dir, or pass --overwrite True to "
            f"replace it")
    args.overwrite = bool(found)


def clear_previous_run(args):
    """Remove what killed writers left behind; with ``--overwrite True`` also delete the
    previous run's checkpoints, metrics and log. Returns the lines to log (the log file
    itself may go, so this runs before logging is set up)."""
    notes = [f"removed '{name}', left by a write that was cut short"
             for name in remove_stale_temporaries(args.ckpt_save_dir)]
    if args.overwrite:
        for path in training_checkpoints(args.ckpt_save_dir):
            os.remove(path)
        for name in ("metrics.jsonl", "train.log"):
            path = os.path.join(args.ckpt_save_dir, name)
            if os.path.isfile(path):
                os.remove(path)
        notes.append(f"overwrite: removed the previous run's checkpoints from "
                     f"'{args.ckpt_save_dir}'")
    return notes


def build_network(args, for_training=True):
    """The zoo model of ``args``, without weights (``ckpt_path``/``pretrained`` load later)."""
    kwargs = dict(args.model_kwargs)
    if for_training:
        kwargs.update(drop_rate=args.drop_rate, drop_path_rate=args.drop_path_rate,
                      frozen_stages=args.frozen_stages, norm_eval=args.norm_eval)
    try:
        return create_model(args.model, num_classes=args.num_classes,
                            in_channels=args.in_channels, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build {args.model} with model_kwargs {args.model_kwargs}: "
                          f"{exc}") from None


def weights_source(args):
    """The file to start from: ``ckpt_path``, the official weights, or None."""
    if args.ckpt_path:
        if not os.path.isfile(args.ckpt_path):
            raise CheckpointError(f"ckpt_path '{args.ckpt_path}' does not exist")
        return args.ckpt_path
    if args.pretrained:
        return pretrained_file(args.model)
    return None


def load_start_weights(network, path, model_name, use_ema=False, prefix=""):
    """Load ``path`` into ``network`` and log what was loaded (no-op without a path)."""
    if path:
        for note in load_weights(network, path, model_name, use_ema=use_ema):
            logger.info("%s%s", prefix, note)


def mixed_precision(network, level, cast_list=None):
    """mindcv's AMP levels; ``cast_list`` (e.g. ``"[nn.BatchNorm2d]"``) replaces mindcv's
    white (O1) or black (O2) list. mindcv ``eval``s that text; here only ``nn.<Cell>``
    names are accepted."""
    if cast_list is None or level in ("O0", "O3"):
        mindcv_amp.auto_mixed_precision(network, level)
        return
    names = [n.strip() for n in cast_list.strip().strip("[]()").split(",") if n.strip()]
    cells = []
    for name in names:
        cell = getattr(nn, name[len("nn."):] if name.startswith("nn.") else name, None)
        if not (isinstance(cell, type) and issubclass(cell, nn.Cell)):
            raise ConfigError(f"amp_cast_list: '{name}' is not a mindspore.nn cell class")
        cells.append(cell)
    patch = mindcv_amp._auto_white_list if level == "O1" else mindcv_amp._auto_black_list
    patch(network, tuple(cells))


@dataclass
class TrainParts:
    """What the epoch loop drives: the compiled step and the state a checkpoint holds."""

    train_step: TrainStep
    optimizer: object
    ema: object
    params: list
    lr_values: np.ndarray
    compiled: bool = field(default=False, init=False)

    def step(self, images, labels):
        """One training step. The first compiles the graph, then returns the compiler's freed
        heap to the system before the activations are allocated (lower peak memory)."""
        if not self.compiled:
            self.train_step.compile(images, labels)
            release_free_memory()
            self.compiled = True
        return self.train_step(images, labels)

    def current_lr(self):
        """The learning rate of the optimizer's last step, by its own step count (skipped
        steps do not advance it). Reading it waits for the device."""
        step = int(self.optimizer.global_step.asnumpy().reshape(-1)[0])
        return float(self.lr_values[min(max(step - 1, 0), len(self.lr_values) - 1)])


def build_train_step(args, network, steps_per_epoch, group_size):
    """AMP, loss, learning-rate table, optimizer, EMA and the compiled :class:`TrainStep`."""
    mixed_precision(network, args.amp_level, args.amp_cast_list)
    loss_fn = create_loss(name=args.loss, label_smoothing=args.label_smoothing,
                          reduction=args.reduction)
    lr_table = create_scheduler(
        steps_per_epoch, scheduler=args.scheduler, lr=args.lr, min_lr=args.min_lr,
        warmup_epochs=args.warmup_epochs, warmup_factor=args.warmup_factor,
        decay_epochs=args.decay_epochs, decay_rate=args.decay_rate,
        milestones=args.multi_step_decay_milestones, num_epochs=args.epoch_size,
        num_cycles=args.num_cycles, cycle_decay=args.cycle_decay,
        lr_epoch_stair=args.lr_epoch_stair)
    optimizer = create_optimizer(
        network, opt=args.opt, lr=lr_table, weight_decay=args.weight_decay,
        momentum=args.momentum, nesterov=args.use_nesterov,
        weight_decay_filter=args.weight_decay_filter, layer_decay=args.layer_decay,
        loss_scale=1.0, eps=args.eps)
    ema = EMA(network, args.ema_decay) if args.ema else None
    train_step = TrainStep(
        NetWithLoss(network, loss_fn), optimizer, loss_scale=args.loss_scale,
        dynamic_loss_scale=args.loss_scale_type == "dynamic",
        scale_factor=args.loss_scale_factor, scale_window=args.scale_window,
        skip_overflow=args.drop_overflow_update,
        clip_norm=args.clip_value if args.clip_grad else 0.0, ema=ema,
        distributed=group_size > 1, group_size=group_size,
        accumulation_steps=args.gradient_accumulation_steps)
    train_step.set_train(True)
    return TrainParts(train_step, optimizer, ema,
                      state_parameters(network, optimizer, train_step, ema),
                      np.asarray(lr_table, dtype=np.float64))


@dataclass
class RunState:
    """Where the run stands: epochs done, batches trained on (``global_step``), steps into
    the next epoch and that partial epoch's statistics, best validation top-1."""

    epoch: int = 0
    global_step: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0
    step_in_epoch: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    epoch_skipped: int = 0


def resume_state(args, params, model_name, steps_per_epoch):
    """Load ``args.resume`` into ``params`` and return where that run stood."""
    meta = load_training_state(args.resume, params, model=model_name,
                               num_classes=args.num_classes)
    state = RunState(meta["epoch"], meta["global_step"], meta.get("best_top1", -1.0),
                     meta.get("best_epoch", 0), meta.get("step_in_epoch", 0),
                     meta.get("epoch_loss_sum", 0.0), meta.get("epoch_loss_count", 0),
                     meta.get("epoch_skipped", 0))
    logger.info("resumed from '%s': epoch %d done%s, global step %d, best top-1 %s",
                args.resume, state.epoch,
                f" and {state.step_in_epoch} steps of the next" if state.step_in_epoch else "",
                state.global_step, f"{state.best_top1:.2f}%" if state.best_top1 >= 0 else "n/a")
    if state.global_step != state.epoch * steps_per_epoch + state.step_in_epoch:
        logger.warning("warning: %d steps per epoch now, the checkpoint has %d steps after %d "
                       "epochs: the learning-rate schedule shifts", steps_per_epoch,
                       state.global_step, state.epoch)
    return state
