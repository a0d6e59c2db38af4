"""Training and validation runs: what ``train.py`` and ``validate.py`` do.

Training is a Python loop over the batches that calls one compiled training step; rank 0
alone writes checkpoints, metrics and progress. Each job of a run has its module, in the
order a run meets them: :mod:`.setup` (device, seeds), :mod:`.settings` (every ``auto``
resolved), :mod:`.preflight` (inputs checked), :mod:`.run_folder`, :mod:`.reporting` (what is
shown), :mod:`.network`, :mod:`.train_step`, :mod:`.keeper` (which checkpoints),
:mod:`.epoch_end` (validation, records, checkpoints), :mod:`.loop` (one epoch).
"""
import dataclasses
import os
import time

from ..config import config_to_yaml
from ..data import DataError, EvalData, TrainData
from ..run_state import RunState, restore
from .epoch_end import EpochEnd
from .evaluation import EvalNet, evaluate
from .keeper import CheckpointKeeper
from .loop import run_epoch
from .network import create_network
from .preflight import check_inputs
from .reporting import Progress, duration, log_run, logger, setup_logging
from .run_folder import prepare_run_folder
from .settings import resolve_settings
from .setup import setup_context
from .train_step import build_train_step, mixed_precision

__all__ = ["train", "validate"]


def train(args):
    """Train as configured by ``args`` (from :func:`res2net_ms.config.parse_args`).

    Returns a summary: final and best validation metrics, steps, seconds and checkpoint paths.
    """
    rank, group_size = setup_context(args)
    notes = resolve_settings(args)
    config_yaml = config_to_yaml(args)
    plan = check_inputs(args)
    if rank == 0:
        notes += prepare_run_folder(args, config_yaml)
    setup_logging(rank, os.path.join(args.ckpt_save_dir, "train.log"))
    for note in notes:
        logger.info(note)
    if args.dataset_sink_mode and args.device_target == "CPU":
        logger.info("dataset_sink_mode: MindSpore has no data sink on CPU; the loop feeds "
                    "the batches")

    network = create_network(args, plan.weights)
    data = TrainData(args, plan.data["samples"][args.train_split], rank, group_size)
    if data.steps_per_epoch == 0:
        raise DataError(f"no training batch: {plan.data['counts'][args.train_split]} "
                        f"images over {group_size} ranks at batch_size {args.batch_size} "
                        f"with drop_remainder")
    val_data = (EvalData(args, plan.data["samples"][args.val_split], rank, group_size)
                if args.val_while_train else None)
    parts = build_train_step(args, network, data.steps_per_epoch, group_size)
    state = dataclasses.replace(
        plan.resumed or RunState(), model=network.default_cfg.name, config=config_yaml,
        classes=list(plan.data["classes"]), has_ema=parts.ema is not None)
    if plan.resumed:
        restore(args.resume, parts.params, args.num_classes)
    keeper = CheckpointKeeper(args.ckpt_save_dir, state.model, args.ckpt_save_interval,
                              args.keep_checkpoint_max, args.ckpt_save_policy, rank == 0)
    end_epoch = EpochEnd(args, network, parts, keeper, val_data, state, rank, group_size)
    log_run(args, network, plan.data, group_size, data.steps_per_epoch, plan.resumed)
    progress = Progress(args, data.steps_per_epoch, data.steps_per_epoch * args.epoch_size,
                        rank == 0)
    run_start, first_epoch = time.perf_counter(), state.epoch

    while state.epoch < args.epoch_size:
        progress.start_epoch(state.epoch + 1, state.global_step)
        epoch_start = time.perf_counter()
        stats = run_epoch(args, parts, data, state, progress, keeper)
        end_epoch(stats, state, epoch_start, data.skipped)

    return _finish(args, state, keeper, end_epoch, first_epoch, time.perf_counter() - run_start)


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
            "best": keeper.best if best is not None else None, "written": keeper.written}


def validate(args):
    """Evaluate ``ckpt_path`` (or the official weights with ``pretrained``) on ``val_split``.

    Returns ``{"top1", "top5", "loss", "images", "images_per_s", "seconds"}`` (and
    ``"bad_images_skipped"`` when undecodable files were left out).
    """
    rank, group_size = setup_context(args)
    notes = resolve_settings(args, for_training=False)
    plan = check_inputs(args, for_training=False)
    setup_logging(rank)
    for note in notes:
        logger.info(note)
    network = create_network(args, plan.weights, for_training=False, use_ema=args.ema)
    mixed_precision(network, args.val_amp_level or args.amp_level, args.amp_cast_list)
    data = EvalData(args, plan.data["samples"][args.val_split], rank, group_size)
    result = evaluate(EvalNet(network, topk=min(5, args.num_classes)), data, args.batch_size,
                      distributed=group_size > 1)
    if rank == 0:
        skipped = result.get("bad_images_skipped")
        print(f"{args.model} {plan.weights}{' (EMA)' if args.ema else ''} on "
              f"{os.path.join(args.data_dir, args.val_split)}: top-1: {result['top1']:.2f}% "
              f"top-5: {result['top5']:.2f}% loss: {result['loss']:.4f} "
              f"images/s: {result['images_per_s']:.1f} ({result['images']} images"
              f"{f', {skipped} undecodable skipped' if skipped else ''})", flush=True)
    return result
