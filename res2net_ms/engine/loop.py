"""The epoch loop: feed one epoch of batches to the compiled training step.

The loop waits for the device only where a number is needed: a progress line, a step
checkpoint, the epoch's end. The steps run since the last wait are then read in one go.
"""
import math
from dataclasses import dataclass

__all__ = ["TrainingDiverged", "EpochStats", "run_epoch"]


class TrainingDiverged(ValueError):
    """The loss stayed non-finite: the run stops, its last good checkpoint is kept."""


@dataclass
class EpochStats:
    """What an epoch's record needs from its loop (the sums behind ``mean_loss`` and
    ``skipped`` are the run state's, where a step checkpoint keeps them)."""

    mean_loss: float
    skipped: int
    nonfinite: int       # non-finite losses in a row at the epoch's end
    loss_scale: float
    lr: float
    images_per_s: float


def _step_outputs(args, parts, data, epoch, start_step):
    """The outputs of the epoch's training steps from ``start_step`` on: the loop feeds the
    batches, or, with ``dataset_sink_mode`` on Ascend/GPU, the device pulls them itself."""
    if args.dataset_sink_mode and args.device_target != "CPU":
        return data.sink_steps(parts.train_step, epoch, start_step)
    return (parts.step(images, labels) for images, labels in data.batches(epoch, start_step))


def run_epoch(args, parts, data, state, progress, keeper):
    """Run the rest of the epoch ``state.epoch + 1`` from ``state.step_in_epoch`` on, then move
    ``state`` past it (its partial-epoch statistics start over); return its
    :class:`EpochStats`.

    ``keeper`` writes a step checkpoint every ``args.ckpt_save_steps`` steps. Without a
    dynamic loss scale, ``args.max_nonfinite_steps`` non-finite losses in a row raise
    :class:`TrainingDiverged` (no checkpoint is written with non-finite weights).
    """
    pending = []
    index = synced = state.step_in_epoch
    last_loss, loss_scale, nonfinite = float("nan"), None, 0
    guard = args.loss_scale_type != "dynamic"

    def drain():
        """Wait for the device and account for the steps run since the last wait."""
        nonlocal last_loss, loss_scale, nonfinite
        for loss_t, finite_t, scale_t in pending:
            last_loss, applied = float(loss_t.asnumpy()), bool(finite_t.asnumpy())
            loss_scale = float(scale_t.asnumpy())
            if not applied:
                state.epoch_skipped += 1
            if applied and math.isfinite(last_loss):
                state.epoch_loss_sum += last_loss
                state.epoch_loss_count += 1
                nonfinite = 0
            else:
                nonfinite += 1
        pending.clear()
        if guard and nonfinite >= args.max_nonfinite_steps:
            raise TrainingDiverged(
                f"the loss was not finite for {nonfinite} steps in a row (epoch "
                f"{state.epoch + 1}, step {index}): lower lr, set clip_grad: true or "
                f"loss_scale_type: dynamic; the last good checkpoint is kept")

    for outputs in _step_outputs(args, parts, data, state.epoch, state.step_in_epoch):
        pending.append(outputs)
        index += 1
        state.global_step += 1
        if progress.wants_sync(index):
            drain()
            progress.update(index, state.global_step, last_loss, index - synced,
                            parts.current_lr)
            synced = index
        if args.ckpt_save_steps and index % args.ckpt_save_steps == 0 \
                and index < progress.steps:
            drain()
            if nonfinite == 0 or parts.train_step.skip_overflow:
                state.step_in_epoch = index
                keeper.save_step(parts.params, state)
    drain()
    count = state.epoch_loss_count
    stats = EpochStats(state.epoch_loss_sum / count if count else None, state.epoch_skipped,
                       nonfinite, loss_scale, parts.current_lr(),
                       progress.speed(state.global_step))
    state.epoch, state.step_in_epoch = state.epoch + 1, 0
    state.epoch_loss_sum, state.epoch_loss_count, state.epoch_skipped = 0.0, 0, 0
    return stats
