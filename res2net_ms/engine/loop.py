"""The epoch loop: feed one epoch of batches to the compiled training step.

The loop waits for the device only where a number is needed: a progress line, a step
checkpoint, the epoch's end. The steps run since the last wait are then read in one go.
"""
import math

__all__ = ["TrainingDiverged", "EpochStats", "run_epoch"]


class TrainingDiverged(ValueError):
    """The loss stayed non-finite: the run stops, its last good checkpoint is kept."""


class EpochStats:
    """The running statistics of one epoch: what the epoch's record and a step checkpoint
    carry. ``nonfinite`` counts the current run of non-finite losses."""

    def __init__(self, state):
        self.loss_sum, self.loss_count = state.epoch_loss_sum, state.epoch_loss_count
        self.skipped, self.nonfinite = state.epoch_skipped, 0
        self.last_loss, self.loss_scale, self.lr, self.images_per_s = float("nan"), None, 0.0, None

    @property
    def mean_loss(self):
        return self.loss_sum / self.loss_count if self.loss_count else None

    def add(self, loss, applied):
        """One step's loss; ``applied`` is False when the step was skipped (overflow)."""
        self.last_loss = loss
        if not applied:
            self.skipped += 1
        if applied and math.isfinite(loss):
            self.loss_sum += loss
            self.loss_count += 1
            self.nonfinite = 0
        else:
            self.nonfinite += 1


def run_epoch(parts, steps, progress, state, args, save_step):
    """Run the rest of an epoch (from ``state.step_in_epoch``) and return its statistics.

    ``steps`` yields the outputs ``(loss, finite, loss_scale)`` of the epoch's training steps,
    each run as it is drawn.
    ``save_step(stats)`` writes a step checkpoint every ``args.ckpt_save_steps`` steps.
    Without a dynamic loss scale, ``args.max_nonfinite_steps`` non-finite losses in a row
    raise :class:`TrainingDiverged` (no checkpoint is written with non-finite weights).
    """
    stats, pending = EpochStats(state), []
    index, synced = state.step_in_epoch, state.step_in_epoch
    guard = args.loss_scale_type != "dynamic"

    def drain():
        """Wait for the device and account for the steps run since the last wait."""
        for loss_t, finite_t, scale_t in pending:
            stats.add(float(loss_t.asnumpy()), bool(finite_t.asnumpy()))
            stats.loss_scale = float(scale_t.asnumpy())
        pending.clear()
        if guard and stats.nonfinite >= args.max_nonfinite_steps:
            raise TrainingDiverged(
                f"the loss was not finite for {stats.nonfinite} steps in a row (epoch "
                f"{state.epoch + 1}, step {index}): lower lr, set clip_grad: true or "
                f"loss_scale_type: dynamic; the last good checkpoint is kept")

    for outputs in steps:
        pending.append(outputs)
        index += 1
        state.global_step += 1
        if progress.wants_sync(index):
            drain()
            progress.update(index, state.global_step, stats.last_loss, parts.current_lr(),
                            index - synced)
            synced = index
        if args.ckpt_save_steps and index % args.ckpt_save_steps == 0 \
                and index < progress.steps:
            drain()
            if stats.nonfinite == 0 or parts.train_step.skip_overflow:
                state.step_in_epoch = index
                save_step(stats)
    drain()
    stats.lr = parts.current_lr()
    stats.images_per_s = progress.speed(state.global_step)
    return stats
