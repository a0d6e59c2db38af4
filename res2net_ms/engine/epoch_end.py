"""The work at the end of every epoch: BN averaging, validation, the record, checkpoints.

Step checkpoints (``ckpt_save_steps``) are written here too, so that every checkpoint of a
run carries the same metadata.
"""
import json
import time

from mindspore import Tensor

from ..data import create_eval_loader
from .checkpoint import FORMAT
from .evaluation import EvalNet, average_bn_statistics, evaluate
from .reporting import epoch_line
from .setup import logger

__all__ = ["EmaSwap", "EpochEnd"]


class EmaSwap:
    """Evaluate with the EMA weights in place of the network's, then put them back."""

    def __init__(self, ema):
        self.ema = ema

    def __enter__(self):
        self.saved = []
        if self.ema is None:
            return self
        for param, avg in zip(self.ema.weights, self.ema.ema_weights):
            self.saved.append(param.asnumpy().copy())
            param.set_data(Tensor(avg.asnumpy()))
        return self

    def __exit__(self, *exc):
        if self.ema is not None:
            for param, value in zip(self.ema.weights, self.saved):
                param.set_data(Tensor(value))
        return False


class EpochEnd:
    """Called after each epoch's last step: brings the ranks' BN statistics together,
    validates when due (with the EMA weights if any), logs the epoch, writes its record to
    ``metrics.jsonl`` and its checkpoints (rank 0), and updates the run's state."""

    def __init__(self, args, network, parts, keeper, metrics, config_yaml, data_info, rank,
                 group_size):
        self.args = args
        self.parts = parts
        self.keeper = keeper
        self.metrics = metrics
        self.config_yaml = config_yaml
        self.classes = json.dumps(list(data_info["classes"]))
        self.val_samples = data_info["samples"].get(args.val_split)
        self.rank = rank
        self.group_size = group_size
        self.model_name = network.default_cfg.name
        self.eval_net = (EvalNet(network, topk=min(5, args.num_classes))
                         if args.val_while_train else None)
        self.last_val = None
        self.written = []

    def __call__(self, number, stats, state, epoch_start, bad_images=()):
        """Finish epoch ``number`` (1-based) from the loop's ``stats``; update ``state``."""
        args = self.args
        if self.group_size > 1:
            average_bn_statistics(self.parts.params, self.group_size)
        state.epoch, state.step_in_epoch = number, 0
        record = self._record(number, stats, state, time.perf_counter() - epoch_start,
                              bad_images)
        val_top1 = -1.0
        if self._validation_due(number):
            with EmaSwap(self.parts.ema):
                self.last_val = evaluate(
                    self.eval_net,
                    create_eval_loader(args, self.val_samples, self.rank, self.group_size),
                    args.batch_size, distributed=self.group_size > 1)
            record.update({f"val_{k}": v for k, v in self.last_val.items()})
            record["val_ema"] = self.parts.ema is not None
            val_top1 = self.last_val["top1"]
            if val_top1 > state.best_top1:
                state.best_top1, state.best_epoch = val_top1, number
        record.update(best_top1=state.best_top1 if state.best_top1 >= 0 else None,
                      best_epoch=state.best_epoch)
        logger.info(epoch_line(record, args.epoch_size, self.parts.ema is not None))
        if stats.nonfinite and not self.parts.train_step.skip_overflow:
            logger.warning("warning: no checkpoint for epoch %d: its last %d losses were not "
                           "finite", number, stats.nonfinite)
        elif self.rank == 0:
            self.written = self.keeper.save(self.parts.params, self.meta(state, val_top1),
                                            number, state.best_epoch == number and val_top1 >= 0)
            self.metrics.append(record)
        return record

    def save_step(self, state, stats):
        """A checkpoint inside an epoch (rank 0): resumable at ``state.step_in_epoch``."""
        if self.rank != 0:
            return
        meta = self.meta(state, -1.0)
        meta.update(epoch_loss_sum=stats.loss_sum, epoch_loss_count=stats.loss_count,
                    epoch_skipped=stats.skipped)
        self.written = self.keeper.save_step(self.parts.params, meta)

    def _validation_due(self, number):
        args = self.args
        return args.val_while_train and (number % args.val_interval == 0
                                         or number == args.epoch_size)

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

    def meta(self, state, val_top1):
        return {"format": FORMAT, "epoch": state.epoch, "global_step": state.global_step,
                "step_in_epoch": state.step_in_epoch, "best_top1": state.best_top1,
                "best_epoch": state.best_epoch, "val_top1": val_top1, "model": self.model_name,
                "has_ema": int(self.parts.ema is not None), "config": self.config_yaml,
                "classes": self.classes}
