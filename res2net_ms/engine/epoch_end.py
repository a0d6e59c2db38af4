"""The work at the end of every epoch: BN averaging, validation, the record, checkpoints."""
import os
import time

from .evaluation import EvalNet, average_bn_statistics, evaluate
from .reporting import MetricsFile, epoch_line, logger

__all__ = ["EpochEnd"]


class EpochEnd:
    """Called after each epoch's last step: brings the ranks' BN statistics together,
    validates when due (with the EMA weights if any), logs the epoch, writes its record to
    ``metrics.jsonl`` and its checkpoints (rank 0), and moves the run's state on.

    The record goes first: should the run die before the checkpoint is written, the resumed
    run drops the record of the epoch it redoes.
    """

    def __init__(self, args, network, parts, keeper, val_data, state, rank, group_size):
        self.args = args
        self.network = network
        self.parts = parts
        self.keeper = keeper
        self.val_data = val_data
        self.group_size = group_size
        self.metrics = MetricsFile(os.path.join(args.ckpt_save_dir, "metrics.jsonl"),
                                   state.epoch, rank == 0)
        self.eval_net = None  # built at the first validation, then kept: it compiles once
        self.last_val = None

    def __call__(self, stats, state, epoch_start, bad_images=()):
        """Finish the epoch ``state.epoch`` the loop just ran, from its ``stats``."""
        args, number = self.args, state.epoch
        if self.group_size > 1:
            average_bn_statistics(self.parts.params, self.group_size)
        record = self._record(number, stats, state, time.perf_counter() - epoch_start,
                              bad_images)
        state.val_top1 = -1.0
        if self.val_data and (number % args.val_interval == 0 or number == args.epoch_size):
            self.eval_net = self.eval_net or EvalNet(self.network, min(5, args.num_classes))
            self.last_val = evaluate(self.eval_net, self.val_data, args.batch_size,
                                     distributed=self.group_size > 1, ema=self.parts.ema)
            record.update({f"val_{k}": v for k, v in self.last_val.items()})
            record["val_ema"] = self.parts.ema is not None
            state.val_top1 = self.last_val["top1"]
            if state.val_top1 > state.best_top1:
                state.best_top1, state.best_epoch = state.val_top1, number
        record.update(best_top1=state.best_top1 if state.best_top1 >= 0 else None,
                      best_epoch=state.best_epoch)
        logger.info(epoch_line(record, args.epoch_size, self.parts.ema is not None))
        if stats.nonfinite and not self.parts.train_step.skip_overflow:
            logger.warning("warning: no checkpoint for epoch %d: its last %d losses were not "
                           "finite", number, stats.nonfinite)
        else:
            self.metrics.append(record)
            self.keeper.save(self.parts.params, state,
                             is_best=state.best_epoch == number and state.val_top1 >= 0)
        return record

    def _record(self, number, stats, state, seconds, bad_images):
        speed = stats.images_per_s
        record = {
            "epoch": number, "global_step": state.global_step, "lr": stats.lr,
            "train_loss": stats.mean_loss, "train_seconds": round(seconds, 3),
            "train_images_per_s": round(speed * self.group_size, 2) if speed else None,
        }
        if stats.skipped or self.args.loss_scale_type == "dynamic":
            record.update(skipped_steps=stats.skipped, loss_scale=stats.loss_scale)
        if bad_images:
            record["bad_images_skipped"] = len(bad_images)
        return record
