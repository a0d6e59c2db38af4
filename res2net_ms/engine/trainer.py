"""Training and validation runs: what ``train.py`` and ``validate.py`` do.

Training is a Python loop over the batches that calls one compiled training step; rank 0
alone writes checkpoints, metrics and progress. Each part of a run lives in its own module:
:mod:`.setup` (checks, context, network, step), :mod:`.loop` (one epoch),
:mod:`.epoch_end` (validation, records, checkpoints) and :mod:`.reporting` (what is shown).
"""
import os
import time

import mindspore as ms

from ..config import config_to_yaml, resolve_model_defaults, save_config
from ..data import DataError, TrainData, create_eval_loader
from .checkpoint import CheckpointError, CheckpointKeeper
from .epoch_end import EpochEnd
from .evaluation import EvalNet, evaluate
from .loop import run_epoch
from .reporting import MetricsFile, Progress, duration
from .setup import (RunState, build_network, build_train_step, check_inputs,
                    clear_previous_run, load_start_weights, logger, mixed_precision,
                    resume_state, seed_everything, setup_context, setup_logging,
                    weights_source)

__all__ = ["train", "validate"]


def train(args):
    """Train as configured by ``args`` (from :func:`res2net_ms.config.parse_args`).

    Returns a summary: final and best validation metrics, steps, seconds and checkpoint paths.
    """
    resolve_model_defaults(args)
    data_info = check_inputs(args, for_training=True)
    weights_path = None if args.resume else weights_source(args)
    rank, group_size = setup_context(args)
    save_dir = args.ckpt_save_dir
    if rank == 0:
        data_info["notes"] += clear_previous_run(args)
    setup_logging(rank, os.path.join(save_dir, "train.log"))
    for note in data_info["notes"]:
        logger.info(note)
    if args.dataset_sink_mode and args.device_target == "CPU":
        logger.info("dataset_sink_mode: MindSpore has no data sink on CPU; the loop feeds "
                    "the batches")
    seed_everything(args.seed)

    network = build_network(args)
    model_name = network.default_cfg.name
    load_start_weights(network, weights_path, model_name, prefix="fine-tune: ")
    data = TrainData(args, data_info["samples"][args.train_split], rank, group_size)
    if data.steps_per_epoch == 0:
        raise DataError(f"no training batch: {data_info['counts'][args.train_split]} "
                              f"images over {group_size} ranks at batch_size "
                              f"{args.batch_size} with drop_remainder")
    parts = build_train_step(args, network, data.steps_per_epoch, group_size)
    state = (resume_state(args, parts.params, model_name, data.steps_per_epoch) if args.resume
             else RunState())

    if rank == 0:
        save_config(args, os.path.join(save_dir, "config.yaml"))
    _log_run(args, network, data_info, group_size, data.steps_per_epoch)
    keeper = CheckpointKeeper(save_dir, model_name, args.ckpt_save_interval,
                              args.keep_checkpoint_max, args.ckpt_save_policy)
    metrics = MetricsFile(os.path.join(save_dir, "metrics.jsonl"), state.epoch, rank == 0)
    progress = Progress(args, data.steps_per_epoch, data.steps_per_epoch * args.epoch_size,
                        rank == 0)
    end_epoch = EpochEnd(args, network, parts, keeper, metrics, config_to_yaml(args),
                         data_info, rank, group_size)
    run_start, first_epoch = time.perf_counter(), state.epoch

    for epoch in range(first_epoch, args.epoch_size):
        progress.start_epoch(epoch + 1, state.global_step)
        epoch_start = time.perf_counter()
        stats = run_epoch(parts, _step_outputs(args, parts, data, epoch, state.step_in_epoch),
                          progress, state, args, lambda s: end_epoch.save_step(state, s))
        progress.end_epoch()
        end_epoch(epoch + 1, stats, state, epoch_start, data.skipped)

    return _finish(args, state, keeper, end_epoch, first_epoch, time.perf_counter() - run_start)


def _step_outputs(args, parts, data, epoch, start_step):
    """The outputs of the epoch's training steps from ``start_step`` on: the loop feeds the
    batches, or, with ``dataset_sink_mode`` on Ascend/GPU, the device pulls them itself."""
    if args.dataset_sink_mode and args.device_target != "CPU":
        sink = ms.data_sink(parts.train_step, data.loader(epoch, start_step), sink_size=1)
        return (sink() for _ in range(start_step, data.steps_per_epoch))
    return (parts.step(images, labels) for images, labels in data.batches(epoch, start_step))


def _log_run(args, network, data_info, group_size, steps_per_epoch):
    trainable = sum(p.size for p in network.trainable_params())
    logger.info("model %s (%d classes, %s trainable parameters) on %s, mode %s, amp %s, "
                "%d rank(s); %d train / %s val images, %d steps per epoch, %d epochs",
                args.model, args.num_classes, f"{trainable:,}", args.device_target,
                "graph" if args.mode == 0 else "pynative", args.amp_level, group_size,
                data_info["counts"][args.train_split],
                data_info["counts"].get(args.val_split, "-"), steps_per_epoch, args.epoch_size)


def _finish(args, state, keeper, end_epoch, first_epoch, seconds):
    """Log the run's end and return its summary."""
    best = state.best_top1 if state.best_top1 >= 0 else None
    if first_epoch >= args.epoch_size:
        logger.info("nothing to do: '%s' already finished all %d epochs", args.resume,
                    args.epoch_size)
    else:
        logger.info("done in %s; best val top-1 %s; checkpoints in %s", duration(seconds),
                    f"{best:.2f}% (epoch {state.best_epoch})" if best is not None else "n/a",
                    args.ckpt_save_dir)
    return {"epochs": args.epoch_size, "global_step": state.global_step, "seconds": seconds,
            "best_top1": best, "best_epoch": state.best_epoch, "last_val": end_epoch.last_val,
            "ckpt_save_dir": args.ckpt_save_dir, "last": keeper.last,
            "best": keeper.best if best is not None else None, "written": end_epoch.written}


def validate(args):
    """Evaluate ``ckpt_path`` (or the official weights with ``pretrained``) on ``val_split``.

    Returns ``{"top1", "top5", "loss", "images", "images_per_s", "seconds"}``.
    """
    resolve_model_defaults(args)
    data_info = check_inputs(args, for_training=False)
    weights_path = weights_source(args)
    if weights_path is None:
        raise CheckpointError("nothing to evaluate: pass --ckpt_path (or --pretrained True)")
    rank, group_size = setup_context(args)
    setup_logging(rank)
    for note in data_info["notes"]:
        logger.info(note)
    seed_everything(args.seed)
    network = build_network(args, for_training=False)
    load_start_weights(network, weights_path, args.model, use_ema=args.ema)
    mixed_precision(network, args.val_amp_level or args.amp_level, args.amp_cast_list)
    samples = data_info["samples"][args.val_split]
    result = evaluate(EvalNet(network, topk=min(5, args.num_classes)),
                      create_eval_loader(args, samples, rank, group_size), args.batch_size,
                      distributed=group_size > 1)
    if rank == 0:
        print(f"{args.model} {weights_path}{' (EMA)' if args.ema else ''} on "
              f"{os.path.join(args.data_dir, args.val_split)}: top-1: {result['top1']:.2f}% "
              f"top-5: {result['top5']:.2f}% loss: {result['loss']:.4f} "
              f"images/s: {result['images_per_s']:.1f} ({result['images']} images)", flush=True)
    return result
