"""Detector runs: what ``train.py`` and ``validate.py`` do when ``detector`` is set.

The run is the classifier's (device set-up, settings, run folder, logging, the training
checkpoint and its keeper, ``metrics.jsonl``, resume, msrun) with mmdetection's parts: a
COCO-format set (:class:`~res2net_ms.det.train_data.CocoTrainSet`), one compiled
:class:`~res2net_ms.det.train_step.TrainStep` of the detector, mmdetection's SGD and step
schedule (:func:`~res2net_ms.det.trainer.lr_schedule`, ``auto_scale_lr``) and COCO's box (and
mask) AP as the validation score, kept as the run state's best in percent.
"""
import dataclasses
import difflib
import math
import os
import time
from dataclasses import dataclass

import numpy as np
from mindspore import Tensor, nn

from ..compile_cache import compile_cell, lr_table_for_graph
from ..config import OPTIONS_BY_NAME, ConfigError, config_to_yaml
from ..data import DataError
from ..det.coco import check_images, image_paths, read_annotations
from ..det.evaluate import evaluate_detector
from ..det.factory import (create_detector, get_detector_config, list_detectors,
                            train_settings)
from ..det.train_data import CocoTrainSet
from ..det.train_step import TrainStep, check_overflow
from ..det.trainer import lr_schedule
from ..loss_scale import LossScale
from ..run_state import CheckpointError, RunState, check_resume, read_run_state, restore
from ..weights import weights_source
from .evaluation import ema_weights
from .keeper import CheckpointKeeper
from .loop import TrainingDiverged
from .reporting import MetricsFile, duration, logger, setup_logging
from .run_folder import check_fresh_folder, prepare_run_folder
from .settings import resolve_settings
from .setup import setup_context
from .train_step import EMA, mixed_precision, state_parameters

__all__ = ["train_detector_run", "validate_detector"]


@dataclass
class DetPlan:
    """What the checks found: the training set, the validation annotations and folder, the
    class names (the training file's categories), the weights to start from or evaluate and
    the state of the run to resume."""

    classes: tuple
    train: CocoTrainSet = None
    val: tuple = None          # (pycocotools COCO, image folder)
    weights: str = None
    resumed: RunState = None


# Classification settings a detector run does not apply (mmdetection's pipeline, loss and
# step have none of them): set to anything but their default, they stop the run.
NOT_FOR_DETECTORS = ("dataset_sink_mode", "num_samples", "aug_repeats", "color_jitter",
                     "auto_augment", "re_prob", "mixup", "cutmix", "label_smoothing",
                     "use_nesterov", "clip_grad", "layer_decay", "gradient_accumulation_steps")


def check_det_settings(args):
    """What a detector run takes of the classification options, before anything starts."""
    if args.detector not in list_detectors():
        close = difflib.get_close_matches(args.detector, list_detectors(), n=1)
        raise ConfigError(f"detector '{args.detector}' is not one of list_detectors()"
                          + (f": did you mean '{close[0]}'?" if close else ""))
    changed = [name for name in NOT_FOR_DETECTORS
               if getattr(args, name) != OPTIONS_BY_NAME[name].default]
    if changed:
        raise ConfigError(f"{', '.join(changed)}: classification settings, not applied to a "
                          f"detector's training: remove {'them' if changed[1:] else 'it'}")
    if args.opt not in ("momentum", "sgd") or args.scheduler != "multi_step_decay":
        raise ConfigError("a detector trains with mmdetection's SGD and step schedule: set opt: "
                          "momentum and scheduler: multi_step_decay (configs/det/)")
    try:
        train_settings(get_detector_config(args.detector), args.train_cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _split(args, split):
    """``(annotation file, image folder)`` of ``train`` or ``val``: mmdetection's COCO layout
    (``annotations/instances_<split>.json`` beside the folder ``<split>``) unless named."""
    name = getattr(args, f"{split}_split")
    ann = getattr(args, f"{split}_ann_file") or os.path.join("annotations",
                                                             f"instances_{name}.json")
    return os.path.join(args.data_dir, ann), os.path.join(args.data_dir, name)


def _read_val(args, classes=None):
    """The validation annotations and folder, every image checked; their class names must be
    the training file's (or the detector's)."""
    ann, folder = _split(args, "val")
    coco = read_annotations(ann)
    check_images(coco, image_paths(coco, folder))
    names = tuple(c["name"] for c in sorted(coco.dataset["categories"], key=lambda c: c["id"]))
    if classes is not None and names != tuple(classes):
        raise DataError(f"'{ann}' has the categories {', '.join(names[:5])}... , the training "
                        f"file {', '.join(classes[:5])}...: both must name the same classes")
    return (coco, folder), names


def check_det_inputs(args, group_size, for_training=True):
    """The COCO files and their images, the batch, the checkpoint to resume (or the weights
    to start from, and a run folder free of another run) or the weights to evaluate; sets
    ``num_classes`` from the training file's categories."""
    if not args.data_dir:
        raise ConfigError("data_dir is not set: the folder holding the COCO-format splits")
    try:
        if not for_training:
            val, classes = _read_val(args)
            plan = DetPlan(classes, val=val)
        else:
            ann, folder = _split(args, "train")
            with_mask = get_detector_config(args.detector).with_mask
            train = CocoTrainSet(ann, folder, with_mask=with_mask)
            plan = DetPlan(train.class_names, train=train)
            if args.val_while_train:
                plan.val, _ = _read_val(args, train.class_names)
    except (ValueError, OSError) as exc:  # the COCO readers' one-line errors
        raise DataError(str(exc)) from None
    args.num_classes = len(plan.classes)
    if not for_training:
        plan.weights = args.ckpt_path or None
        if not plan.weights and not args.pretrained:
            raise ConfigError("nothing to evaluate: pass --ckpt_path (or --pretrained True)")
        weights_source(args.ckpt_path, False, None)
        return plan
    if plan.train.steps_per_epoch(args.batch_size, group_size) == 0:
        raise DataError(f"{len(plan.train)} training images make no batch of {args.batch_size} "
                        f"on {group_size} rank(s): lower batch_size")
    if args.resume:
        plan.resumed = check_resume(args.resume, args.detector)
    else:
        plan.weights = weights_source(args.ckpt_path, False, None)
        check_fresh_folder(args)
    return plan


def build_detector(args, plan, max_gts=None):
    """The configured detector for ``plan``'s classes and weights. Training (``max_gts``:
    the most boxes of an image) starts from a detector checkpoint (``ckpt_path``: all but its
    class layers when it has other classes, as mmdetection's ``load_from``) or with
    ``pretrained`` from the backbone's ImageNet weights (mmdetection's backbone ``init_cfg``);
    evaluation reads ``ckpt_path`` (its EMA weights with ``ema``) or, with ``pretrained``,
    the published COCO detector."""
    training = max_gts is not None
    train_cfg = dict(args.train_cfg)
    if training:
        train_cfg["static"] = {**train_cfg.get("static", {}), "max_gts": max_gts}
    ours = bool(plan.weights) and read_run_state(plan.weights) is not None
    if args.ema and not training and not ours:
        raise CheckpointError(f"{plan.weights or 'the published detector'} has no EMA weights "
                              f"(only this project's training checkpoints have): set ema: "
                              f"false")
    path = None if ours else plan.weights
    backbone = None
    if training and args.pretrained and not plan.weights and not plan.resumed:
        backbone = weights_source("", True, get_detector_config(args.detector).backbone)
    try:
        detector = create_detector(
            args.detector, checkpoint_path=path,
            pretrained=args.pretrained and not training and not plan.weights,
            num_classes=len(plan.classes), class_names=plan.classes,
            backbone_kwargs=args.model_kwargs or None, scale=tuple(args.img_scale),
            test_cfg=args.test_cfg, train_cfg=train_cfg,
            roi_sampling_ratio=args.roi_sampling_ratio, new_classes=training,
            backbone_checkpoint=backbone)
    except ValueError as exc:  # a file that does not fit, or settings the parts refuse
        raise CheckpointError(" ".join(str(exc).split())) from None
    if ours:  # a training checkpoint of this project: its weights under their own names
        restore(plan.weights, detector.get_parameters(), len(plan.classes),
                ema=args.ema and not training)
    return detector


def build_det_step(args, detector, optimizer, group_size):
    """The compiled step of ``detector``'s training graph, with the run's mixed precision
    (the backbone and the FPN in float16 as ``amp_level`` says, the heads, their targets and
    losses in float32), loss scale and EMA (``ema_decay`` 0.9998 is mmdetection's
    ``ExpMomentumEMA``: momentum 0.0002, gamma 2000)."""
    mixed_precision(detector.backbone, args.amp_level, args.amp_cast_list)
    mixed_precision(detector.neck, args.amp_level, args.amp_cast_list)
    scale = LossScale(args.loss_scale, args.loss_scale_type == "dynamic",
                      args.loss_scale_factor, args.scale_window)
    ema = EMA(detector, args.ema_decay) if args.ema else None
    return TrainStep(detector.loss_cell(), optimizer, group_size, ema=ema, loss_scale=scale,
                     skip_overflow=args.drop_overflow_update)


def train_detector_run(args):
    """Train the detector ``args.detector`` as configured; returns the run's summary (as
    :func:`~res2net_ms.engine.trainer.train`'s, the score being box mAP in percent)."""
    check_det_settings(args)
    rank, group_size = setup_context(args)
    notes = resolve_settings(args)
    plan = check_det_inputs(args, group_size)
    config_yaml = config_to_yaml(args)
    if rank == 0:
        notes += prepare_run_folder(args, config_yaml)
    setup_logging(rank, os.path.join(args.ckpt_save_dir, "train.log"))
    for note in notes:
        logger.info(note)

    data = plan.train
    detector = build_detector(args, plan, max_gts=data.max_boxes)
    steps = data.steps_per_epoch(args.batch_size, group_size)
    total_batch = args.batch_size * group_size
    lr = args.lr * total_batch / args.base_batch_size if args.auto_scale_lr else args.lr
    rates = lr_schedule(args.epoch_size, steps, lr, args.multi_step_decay_milestones,
                        args.warmup_iters, args.warmup_ratio, args.decay_rate)
    optimizer = nn.SGD(detector.trainable_params(),
                       learning_rate=Tensor(lr_table_for_graph(rates)),
                       momentum=args.momentum, weight_decay=args.weight_decay)
    step = build_det_step(args, detector, optimizer, group_size)
    cell, ema = step.loss_cell, step.ema
    params = state_parameters(detector, optimizer, step, ema)
    state = dataclasses.replace(plan.resumed or RunState(), model=args.detector,
                                config=config_yaml, classes=list(plan.classes),
                                has_ema=ema is not None)
    if plan.resumed:
        restore(args.resume, params)
    keeper = CheckpointKeeper(args.ckpt_save_dir, args.detector, args.ckpt_save_interval,
                              args.keep_checkpoint_max, args.ckpt_save_policy, rank == 0)
    metrics = MetricsFile(os.path.join(args.ckpt_save_dir, "metrics.jsonl"), state.epoch,
                          rank == 0)
    logger.info("detector %s (%d classes, %s trainable parameters) on %s, %d rank(s); %d "
                "train images, %d steps of %d per epoch, %d epochs, lr %g%s", args.detector,
                len(plan.classes), f"{sum(p.size for p in detector.trainable_params()):,}",
                args.device_target, group_size, len(data), steps, total_batch, args.epoch_size,
                lr, f" (auto_scale_lr: {args.lr:g} x {total_batch}/{args.base_batch_size})"
                if args.auto_scale_lr else "")
    if plan.resumed:
        logger.info("resumed from '%s': epoch %d done, %d steps of the next, global step %d",
                    args.resume, state.epoch, state.step_in_epoch, state.global_step)
    run_start, first_epoch = time.perf_counter(), state.epoch

    while state.epoch < args.epoch_size:
        epoch_start = time.perf_counter()
        terms = run_det_epoch(args, step, cell, data, state, rates, keeper, params, rank,
                              group_size)
        record = {"epoch": state.epoch, "global_step": state.global_step,
                  "lr": float(rates[state.global_step - 1]),
                  "train_loss": state.epoch_loss_sum / max(state.epoch_loss_count, 1),
                  "train_seconds": round(time.perf_counter() - epoch_start, 3), **terms}
        if state.epoch_skipped:
            record["skipped_steps"] = state.epoch_skipped
        state.epoch_loss_sum, state.epoch_loss_count, state.epoch_skipped = 0.0, 0, 0
        state.val_top1 = -1.0
        if plan.val and (state.epoch % args.val_interval == 0 or state.epoch == args.epoch_size):
            with ema_weights(ema):
                record.update(_validate(detector, plan.val, args.batch_size, rank))
            state.val_top1 = 100 * record["bbox_mAP"]
            if state.val_top1 > state.best_top1:
                state.best_top1, state.best_epoch = state.val_top1, state.epoch
        logger.info("epoch %d/%d loss %.4f lr %.6f %.1fs%s", state.epoch, args.epoch_size,
                    record["train_loss"], record["lr"], record["train_seconds"],
                    f" | box mAP {record['bbox_mAP']:.3f} AP50 {record['bbox_mAP_50']:.3f}"
                    if "bbox_mAP" in record else "")
        metrics.append(record)
        keeper.save(params, state, is_best=state.best_epoch == state.epoch
                    and state.val_top1 >= 0)

    seconds = time.perf_counter() - run_start
    if first_epoch >= args.epoch_size:
        logger.info("nothing to do: '%s' already finished all %d epochs", args.resume,
                    args.epoch_size)
    else:
        logger.info("done in %s; checkpoints in %s", duration(seconds), args.ckpt_save_dir)
    best = state.best_top1 if state.best_top1 >= 0 else None
    return {"epochs": args.epoch_size, "global_step": state.global_step, "seconds": seconds,
            "best_bbox_mAP": best, "best_epoch": state.best_epoch,
            "ckpt_save_dir": args.ckpt_save_dir, "last": keeper.last,
            "best": keeper.best if best is not None else None, "written": keeper.written}


def run_det_epoch(args, step, cell, data, state, rates, keeper, params, rank, group_size):
    """The rest of epoch ``state.epoch + 1`` from ``state.step_in_epoch`` on: one compiled
    step per batch (through the compile cache), a log line every ``log_interval`` steps, a step checkpoint every
    ``ckpt_save_steps``; moves ``state`` past the epoch and returns the mean of each loss
    term over the steps run here."""
    steps = data.steps_per_epoch(args.batch_size, group_size)
    sums, count = np.zeros(len(cell.names)), 0
    batches = data.batches(args.batch_size, state.epoch, args.seed, args.hflip,
                           state.step_in_epoch, rank, group_size)
    for index, (images, targets, seeds) in enumerate(batches, start=state.step_in_epoch + 1):
        inputs = cell.inputs(images, targets, seeds)
        if index == state.step_in_epoch + 1:  # a restart loads the graph an earlier run made
            compile_cell(step, *inputs, what="detector training step")
        total, losses, overflow, applied = step(*inputs)
        check_overflow(overflow, cell)
        values = np.array([float(v.asnumpy()) for v in losses])
        total = float(total.asnumpy())
        state.global_step += 1
        if not bool(applied.asnumpy()):  # fp16 gradients overflowed: the update was skipped
            state.epoch_skipped += 1
            logger.info("epoch %d/%d step %d/%d skipped: gradients not finite (loss scale now "
                        "%g)", state.epoch + 1, args.epoch_size, index, steps,
                        float(step.loss_scale.scale_sense.asnumpy()))
        elif not math.isfinite(total):
            raise TrainingDiverged(f"epoch {state.epoch + 1}, step {index}: the loss is not "
                                   f"finite ({dict(zip(cell.names, values))}): lower lr; the "
                                   f"last good checkpoint is kept")
        else:
            state.epoch_loss_sum += total
            state.epoch_loss_count += 1
            sums, count = sums + values, count + 1
        if index % args.log_interval == 0 or index == steps:
            logger.info("epoch %d/%d step %d/%d lr %.6f loss %.4f %s", state.epoch + 1,
                        args.epoch_size, index, steps, rates[state.global_step - 1], total,
                        " ".join(f"{n} {v:.4f}" for n, v in zip(cell.names, values)))
        if args.ckpt_save_steps and index % args.ckpt_save_steps == 0 and index < steps:
            state.step_in_epoch = index
            keeper.save_step(params, state)
    state.epoch, state.step_in_epoch = state.epoch + 1, 0
    return {f"train_{n}": float(v) for n, v in zip(cell.names, sums / max(count, 1))}


def _validate(detector, val, batch_size, rank):
    """COCO's metrics of ``detector`` on the validation set (rank 0 evaluates, the others
    wait for its checkpoint at the next step), then back to training mode."""
    if rank != 0:
        return {"bbox_mAP": -1.0, "bbox_mAP_50": -1.0}
    results = evaluate_detector(detector, val[0], val[1], batch_size, log=lambda _: None)
    detector.set_train(True)
    out = {}
    for result in results:
        logger.info(result.report())
        out.update(result.metrics())
    return out


def validate_detector(args):
    """Evaluate ``ckpt_path`` (a detector checkpoint: ours, or mmdetection's) or the published
    weights (``pretrained``) on ``val_split``; prints and returns COCO's metrics."""
    check_det_settings(args)
    rank, _ = setup_context(args)
    notes = resolve_settings(args, for_training=False)
    plan = check_det_inputs(args, 1, for_training=False)
    setup_logging(rank)
    for note in notes:
        logger.info(note)
    detector = build_detector(args, plan)
    start = time.perf_counter()
    results = evaluate_detector(detector, plan.val[0], plan.val[1], args.batch_size,
                                log=lambda _: None)
    out = {"images": len(plan.val[0].dataset["images"]),
           "seconds": time.perf_counter() - start}
    for result in results:
        print(result.report(), flush=True)
        out.update(result.metrics())
    print(f"{args.detector} {plan.weights or 'published weights'}"
          f"{' (EMA weights)' if args.ema else ''} on "
          f"{plan.val[1]}: box mAP {out['bbox_mAP']:.3f} AP50 {out['bbox_mAP_50']:.3f}"
          + (f" mask mAP {out['segm_mAP']:.3f}" if "segm_mAP" in out else "")
          + f" ({out['images']} images, {out['seconds']:.0f} s)", flush=True)
    return out
