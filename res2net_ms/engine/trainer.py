"""Training and validation runs: what ``train.py`` and ``validate.py`` do.

Everything that can be wrong with the input (config, data folder, checkpoints) is checked
before the first graph compiles. Training is a Python loop over the batches that calls one
compiled :class:`TrainStep`; rank 0 alone writes checkpoints, metrics and progress.
"""
import json
import logging
import os
import random
import sys
import time

import numpy as np

from ..config import (ConfigError, config_to_yaml, launched_by_launcher, resolve_model_defaults,
                      save_config)
from ..data import DataError, check_imagefolder, create_eval_loader, create_train_loader
from .checkpoint import (FORMAT, CheckpointError, CheckpointKeeper, load_training_state,
                         load_weights, pretrained_file, read_checkpoint_meta, state_parameters)

__all__ = ["setup_context", "build_network", "train", "validate"]

logger = logging.getLogger("res2net_ms")


def _setup_logging(rank, log_file=None):
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
    import mindspore as ms

    # MindSpore refuses set_device once a kernel has run, even to the same device.
    if args.device_target not in ("auto", ms.get_context("device_target")):
        ms.set_device(args.device_target)
    args.device_target = ms.get_context("device_target")
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
        from mindspore.communication import get_group_size, get_rank, init

        init()
        rank, group_size = get_rank(), get_group_size()
        ms.reset_auto_parallel_context()
        ms.set_auto_parallel_context(device_num=group_size, gradients_mean=True,
                                     parallel_mode=ms.ParallelMode.DATA_PARALLEL)
    return rank, group_size


def _seed_everything(seed):
    """The same seed on every rank: data-parallel replicas must start from equal weights."""
    import mindspore as ms

    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


def build_network(args, for_training=True):
    """The zoo model of ``args``, without weights (``ckpt_path``/``pretrained`` load later)."""
    from ..models import create_model

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


def _weights_source(args):
    if args.ckpt_path:
        if not os.path.isfile(args.ckpt_path):
            raise CheckpointError(f"ckpt_path '{args.ckpt_path}' does not exist")
        return args.ckpt_path
    if args.pretrained:
        return pretrained_file(args.model)
    return None


class _Progress:
    """A tqdm bar on a terminal, otherwise a log line every ``log_interval`` steps.

    Speed and ETA leave out the run's first step, which includes the compile. The loop only
    waits for the device where this output needs a number (:meth:`wants_sync`), so that
    steps stay queued on Ascend/GPU between log lines.
    """

    def __init__(self, args, steps_per_epoch, total_steps, enabled):
        mode = args.progress_bar
        self.bar_mode = enabled and (mode == "on" or (mode == "auto" and sys.stderr.isatty()))
        self.log_mode = enabled and not self.bar_mode
        self.interval = args.log_interval
        self.steps = steps_per_epoch
        self.total = total_steps
        self.epochs = args.epoch_size
        self.images_per_step = args.batch_size
        self.bar = None
        self.base = None

    def start_epoch(self, epoch, global_step):
        self.epoch = epoch
        self.base = (time.perf_counter(), global_step) if self.base is not None else None
        if self.bar_mode:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps, desc=f"epoch {epoch}/{self.epochs}",
                            dynamic_ncols=True, leave=False, file=sys.stderr)

    def wants_sync(self, index):
        return (self.base is None or self.bar is not None or index % self.interval == 0
                or index == self.steps)

    def speed(self, global_step):
        """Images per second of this epoch so far (compile excluded), or None."""
        if self.base is None or global_step <= self.base[1]:
            return None
        return (self.images_per_step * (global_step - self.base[1])
                / max(time.perf_counter() - self.base[0], 1e-9))

    def update(self, index, global_step, loss, lr, done):
        """Called after a sync; ``done`` steps completed since the previous call."""
        if self.base is None:
            self.base = (time.perf_counter(), global_step)
        speed = self.speed(global_step) or 0.0
        eta = (self.total - global_step) * self.images_per_step / speed if speed else 0.0
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.3g} img/s {speed:.1f} "
                                     f"run eta {_duration(eta)}")
            self.bar.update(done)
        elif self.log_mode and (index % self.interval == 0 or index == self.steps):
            logger.info("epoch %d/%d step %d/%d loss %.4f lr %.6f img/s %.1f eta %s",
                        self.epoch, self.epochs, index, self.steps, loss, lr, speed,
                        _duration(eta))

    def end_epoch(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _run_epoch(train_step, loader, progress, lr_values, global_step):
    """Feed one epoch of batches to the compiled step; return its statistics."""
    losses, pending, scale, lr, index, synced = [], [], None, 0.0, 0, 0

    def drain():
        """Read the losses of the steps run since the last sync (this waits for the device)."""
        skipped_now = 0
        for loss_t, finite_t in pending:
            if bool(finite_t.asnumpy()):
                losses.append(float(loss_t.asnumpy()))
            else:
                skipped_now += 1
        pending.clear()
        return skipped_now

    skipped = 0
    for index, (images, labels) in enumerate(loader.create_tuple_iterator(num_epochs=1),
                                             start=1):
        lr = float(lr_values[min(global_step, len(lr_values) - 1)])
        loss, finite, scale = train_step(images, labels)
        pending.append((loss, finite))
        global_step += 1
        if progress.wants_sync(index):
            skipped += drain()
            progress.update(index, global_step, losses[-1] if losses else float("nan"), lr,
                            index - synced)
            synced = index
    skipped += drain()
    return {"steps": index, "global_step": global_step, "losses": losses, "skipped": skipped,
            "lr": lr, "loss_scale": float(scale.asnumpy()) if scale is not None else None,
            "images_per_s": progress.speed(global_step)}


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _MetricsFile:
    """``metrics.jsonl``: one JSON line per epoch. A resumed run drops the lines of the epochs
    it is about to redo, so the file always describes one consistent run."""

    def __init__(self, path, keep_until_epoch, enabled):
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        kept = []
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line and json.loads(line).get("epoch", 0) <= keep_until_epoch:
                        kept.append(line)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in kept)
        os.replace(tmp, path)

    def append(self, record):
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


class _EmaSwap:
    """Evaluate with the EMA weights in place of the network's, then put them back."""

    def __init__(self, ema):
        self.ema = ema

    def __enter__(self):
        from mindspore import Tensor

        self.saved = []
        if self.ema is None:
            return self
        for param, avg in zip(self.ema.weights, self.ema.ema_weights):
            self.saved.append(param.asnumpy().copy())
            param.set_data(Tensor(avg.asnumpy()))
        return self

    def __exit__(self, *exc):
        from mindspore import Tensor

        if self.ema is not None:
            for param, value in zip(self.ema.weights, self.saved):
                param.set_data(Tensor(value))
        return False


def _check_inputs(args, for_training):
    """Every input check, before anything is built or compiled; returns the data summary."""
    if args.distribute and not launched_by_launcher():
        raise ConfigError("distribute is True but no launcher started this process: run it "
                          "under msrun (msrun --worker_num N python train.py ...) or mpirun, "
                          "or pass --distribute False for one device")
    if for_training:
        splits = (args.train_split,) + ((args.val_split,) if args.val_while_train else ())
    else:
        splits = (args.val_split,)
    info = check_imagefolder(args.data_dir, args.num_classes, splits=splits)
    if for_training:
        images = info["counts"][args.train_split]
        if args.num_samples:
            images = min(images, args.num_samples)
        if args.drop_remainder and images < args.batch_size:
            raise DataError(f"{images} training images are fewer than batch_size "
                            f"{args.batch_size} with drop_remainder: no training step; lower "
                            f"batch_size")
    if for_training and args.resume:
        meta = read_checkpoint_meta(args.resume) if os.path.isfile(args.resume) else None
        if not os.path.isfile(args.resume):
            raise CheckpointError(f"resume checkpoint '{args.resume}' does not exist")
        if meta is None:
            raise CheckpointError(f"'{args.resume}' is not a training checkpoint of this project "
                                  f"(no optimizer state or epoch): use --ckpt_path to start "
                                  f"from its weights instead of --resume")
    return info


def train(args):
    """Train as configured by ``args`` (from :func:`res2net_ms.config.parse_args`).

    Returns a summary: final and best validation metrics, steps, seconds and checkpoint paths.
    """
    resolve_model_defaults(args)
    data_info = _check_inputs(args, for_training=True)
    weights_path = None if args.resume else _weights_source(args)
    rank, group_size = setup_context(args)
    main_rank = rank == 0
    save_dir = args.ckpt_save_dir
    if main_rank:
        os.makedirs(save_dir, exist_ok=True)
    _setup_logging(rank, os.path.join(save_dir, "train.log"))

    from mindcv.loss import create_loss
    from mindcv.optim import create_optimizer
    from mindcv.scheduler import create_scheduler
    from mindcv.utils.amp import auto_mixed_precision

    from .evaluation import EvalNet, average_bn_statistics, evaluate
    from .train_step import EMA, NetWithLoss, TrainStep

    _seed_everything(args.seed)
    network = build_network(args)
    model_name = network.default_cfg.name
    if weights_path:
        for note in load_weights(network, weights_path, model_name):
            logger.info("fine-tune: %s", note)

    first_loader = create_train_loader(args, 0, rank, group_size)
    steps_per_epoch = first_loader.get_dataset_size()
    if steps_per_epoch == 0:
        raise DataError(f"no training batch: {data_info['counts'][args.train_split]} images over "
                        f"{group_size} ranks at batch_size {args.batch_size} with drop_remainder")
    total_steps = steps_per_epoch * args.epoch_size

    auto_mixed_precision(network, args.amp_level)
    loss_fn = create_loss(name=args.loss, label_smoothing=args.label_smoothing)
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
        weight_decay_filter=args.weight_decay_filter, loss_scale=1.0)
    ema = EMA(network, args.ema_decay) if args.ema else None
    train_step = TrainStep(
        NetWithLoss(network, loss_fn), optimizer, loss_scale=args.loss_scale,
        dynamic_loss_scale=args.loss_scale_type == "dynamic",
        scale_factor=args.loss_scale_factor, scale_window=args.scale_window,
        skip_overflow=args.drop_overflow_update,
        clip_norm=args.clip_value if args.clip_grad else 0.0, ema=ema,
        distributed=group_size > 1, group_size=group_size)
    train_step.set_train(True)
    params = state_parameters(network, optimizer, train_step, ema)

    start_epoch, global_step, best_top1, best_epoch = 0, 0, -1.0, 0
    if args.resume:
        meta = load_training_state(args.resume, params, model=model_name,
                                   num_classes=args.num_classes)
        start_epoch, global_step = meta["epoch"], meta["global_step"]
        best_top1, best_epoch = meta.get("best_top1", -1.0), meta.get("best_epoch", 0)
        logger.info("resumed from '%s': epoch %d done, global step %d, best top-1 %s",
                    args.resume, start_epoch, global_step,
                    f"{best_top1:.2f}%" if best_top1 >= 0 else "n/a")
        if global_step != start_epoch * steps_per_epoch:
            logger.warning("warning: %d steps per epoch now, the checkpoint has %d steps after "
                           "%d epochs: the learning-rate schedule shifts", steps_per_epoch,
                           global_step, start_epoch)

    config_yaml = config_to_yaml(args)
    if main_rank:
        save_config(args, os.path.join(save_dir, "config.yaml"))
    logger.info("model %s (%d classes, %s) on %s, mode %s, amp %s, %d rank(s); "
                "%d train / %s val images, %d steps per epoch, %d epochs",
                args.model, args.num_classes,
                f"{sum(p.size for p in network.trainable_params()):,} trainable parameters",
                args.device_target, "graph" if args.mode == 0 else "pynative", args.amp_level,
                group_size, data_info["counts"][args.train_split],
                data_info["counts"].get(args.val_split, "-"), steps_per_epoch, args.epoch_size)

    keeper = CheckpointKeeper(save_dir, model_name, args.ckpt_save_interval,
                              args.keep_checkpoint_max)
    metrics = _MetricsFile(os.path.join(save_dir, "metrics.jsonl"), start_epoch, main_rank)
    progress = _Progress(args, steps_per_epoch, total_steps, main_rank)
    eval_net = EvalNet(network, topk=min(5, args.num_classes)) if args.val_while_train else None
    lr_values = np.asarray(lr_table, dtype=np.float64)
    last_val, written = None, []
    run_start = time.perf_counter()

    for epoch in range(start_epoch, args.epoch_size):
        number = epoch + 1
        loader = first_loader if epoch == 0 else create_train_loader(args, epoch, rank,
                                                                     group_size)
        first_loader = None
        progress.start_epoch(number, global_step)
        epoch_start = time.perf_counter()
        stats = _run_epoch(train_step, loader, progress, lr_values, global_step)
        progress.end_epoch()
        if group_size > 1:
            average_bn_statistics(params, group_size)
        global_step, lr, losses, skipped = (stats["global_step"], stats["lr"], stats["losses"],
                                            stats["skipped"])
        train_seconds = time.perf_counter() - epoch_start
        speed = stats["images_per_s"]
        record = {
            "epoch": number, "global_step": global_step, "lr": lr,
            "train_loss": float(np.mean(losses)) if losses else None,
            "train_seconds": round(train_seconds, 3),
            "train_images_per_s": round(speed * group_size, 2) if speed else None,
        }
        if skipped or args.loss_scale_type == "dynamic":
            record.update(skipped_steps=skipped, loss_scale=stats["loss_scale"])

        is_best = False
        if args.val_while_train and (number % args.val_interval == 0 or
                                     number == args.epoch_size):
            with _EmaSwap(ema):
                last_val = evaluate(eval_net, create_eval_loader(args, rank, group_size),
                                    args.batch_size, distributed=group_size > 1)
            record.update({f"val_{k}": v for k, v in last_val.items()})
            record["val_ema"] = ema is not None
            if last_val["top1"] > best_top1:
                best_top1, best_epoch, is_best = last_val["top1"], number, True
        record.update(best_top1=best_top1 if best_top1 >= 0 else None, best_epoch=best_epoch)
        shown_loss = f"{record['train_loss']:.4f}" if losses else "n/a"
        line = (f"epoch {number}/{args.epoch_size} loss {shown_loss} lr {lr:.6f} "
                f"{train_seconds:.1f}s")
        if record["train_images_per_s"]:
            line += f" ({record['train_images_per_s']:.1f} img/s)"
        if last_val is not None and "val_top1" in record:
            line += (f" | val{' (EMA)' if ema is not None else ''} top-1 {last_val['top1']:.2f}% "
                     f"top-5 {last_val['top5']:.2f}% loss {last_val['loss']:.4f}"
                     f"{' *best*' if is_best else ''}")
        if skipped:
            line += f" | {skipped} overflow steps skipped, loss scale {stats['loss_scale']:g}"
        logger.info(line)
        if main_rank:
            meta = {"format": FORMAT, "epoch": number, "global_step": global_step,
                    "best_top1": best_top1, "best_epoch": best_epoch, "model": model_name,
                    "has_ema": int(ema is not None), "config": config_yaml}
            written = keeper.save(params, meta, number, is_best)
            metrics.append(record)

    total_seconds = time.perf_counter() - run_start
    summary = {
        "epochs": args.epoch_size, "global_step": global_step, "seconds": total_seconds,
        "best_top1": best_top1 if best_top1 >= 0 else None, "best_epoch": best_epoch,
        "last_val": last_val, "ckpt_save_dir": save_dir, "last": keeper.last,
        "best": keeper.best if best_top1 >= 0 else None, "written": written,
    }
    if start_epoch >= args.epoch_size:
        logger.info("nothing to do: '%s' already finished all %d epochs", args.resume,
                    args.epoch_size)
    else:
        logger.info("done in %s; best val top-1 %s; checkpoints in %s", _duration(total_seconds),
                    f"{best_top1:.2f}% (epoch {best_epoch})" if best_top1 >= 0 else "n/a",
                    save_dir)
    return summary


def validate(args):
    """Evaluate ``ckpt_path`` (or the official weights with ``pretrained``) on ``val_split``.

    Returns ``{"top1", "top5", "loss", "images", "images_per_s", "seconds"}``.
    """
    resolve_model_defaults(args)
    _check_inputs(args, for_training=False)
    weights_path = _weights_source(args)
    if weights_path is None:
        raise CheckpointError("nothing to evaluate: pass --ckpt_path (or --pretrained True)")
    rank, group_size = setup_context(args)
    _setup_logging(rank)

    from mindcv.utils.amp import auto_mixed_precision

    from .evaluation import EvalNet, evaluate

    _seed_everything(args.seed)
    network = build_network(args, for_training=False)
    for note in load_weights(network, weights_path, args.model, use_ema=args.ema):
        logger.info("%s", note)
    auto_mixed_precision(network, args.amp_level)
    result = evaluate(EvalNet(network, topk=min(5, args.num_classes)),
                      create_eval_loader(args, rank, group_size), args.batch_size,
                      distributed=group_size > 1)
    if rank == 0:
        print(f"{args.model} {weights_path}{' (EMA)' if args.ema else ''} on "
              f"{os.path.join(args.data_dir, args.val_split)}: top-1: {result['top1']:.2f}% "
              f"top-5: {result['top5']:.2f}% loss: {result['loss']:.4f} "
              f"images/s: {result['images_per_s']:.1f} ({result['images']} images)", flush=True)
    return result
