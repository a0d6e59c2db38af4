"""What a run tells the user: the log, the progress display, the epoch line and
``metrics.jsonl``."""
import json
import logging
import os
import sys
import time

from tqdm import tqdm

from ..fileio import write_text

__all__ = ["logger", "setup_logging", "log_run", "Progress", "MetricsFile", "epoch_line",
           "duration"]

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


def log_run(args, network, data_info, group_size, steps_per_epoch, resumed=None):
    """The run's first lines: where a resumed run stands, then what is trained on what."""
    if resumed is not None:
        logger.info("resumed from '%s': epoch %d done%s, global step %d, best top-1 %s",
                    args.resume, resumed.epoch,
                    f" and {resumed.step_in_epoch} steps of the next"
                    if resumed.step_in_epoch else "", resumed.global_step,
                    f"{resumed.best_top1:.2f}%" if resumed.best_top1 >= 0 else "n/a")
        if resumed.global_step != resumed.epoch * steps_per_epoch + resumed.step_in_epoch:
            logger.warning("warning: %d steps per epoch now, the checkpoint has %d steps after "
                           "%d epochs: the learning-rate schedule shifts", steps_per_epoch,
                           resumed.global_step, resumed.epoch)
    trainable = sum(p.size for p in network.trainable_params())
    logger.info("model %s (%d classes, %s trainable parameters) on %s, mode %s, amp %s, "
                "%d rank(s); %d train / %s val images, %d steps per epoch, %d epochs",
                args.model, args.num_classes, f"{trainable:,}", args.device_target,
                "graph" if args.mode == 0 else "pynative", args.amp_level, group_size,
                data_info["counts"][args.train_split],
                data_info["counts"].get(args.val_split, "-"), steps_per_epoch, args.epoch_size)


def duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
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
        self.last_sync = 0.0

    def start_epoch(self, epoch, global_step):
        self.epoch = epoch
        self.base = (time.perf_counter(), global_step) if self.base is not None else None
        if self.bar_mode:
            self.bar = tqdm(total=self.steps, desc=f"epoch {epoch}/{self.epochs}",
                            dynamic_ncols=True, leave=False, file=sys.stderr)

    def wants_sync(self, index):
        """Whether this step's numbers are needed now: the first step, every
        ``log_interval`` steps, the epoch's last step, and for a bar at most once a second
        (waiting after every step would idle the device)."""
        if self.base is None or index % self.interval == 0 or index == self.steps:
            return True
        return self.bar is not None and time.perf_counter() - self.last_sync >= 1.0

    def speed(self, global_step):
        """Images per second of this epoch so far (compile excluded), or None."""
        if self.base is None or global_step <= self.base[1]:
            return None
        return (self.images_per_step * (global_step - self.base[1])
                / max(time.perf_counter() - self.base[0], 1e-9))

    def update(self, index, global_step, loss, done, current_lr):
        """Called after a sync; ``done`` steps completed since the previous call;
        ``current_lr()`` is asked only when a line is shown (it waits for the device)."""
        self.last_sync = time.perf_counter()
        if self.base is None:
            self.base = (time.perf_counter(), global_step)
        speed = self.speed(global_step) or 0.0
        eta = duration((self.total - global_step) * self.images_per_step / speed if speed
                       else 0.0)
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f} lr {current_lr():.3g} img/s "
                                     f"{speed:.1f} run eta {eta}")
            self.bar.update(done)
            if index == self.steps:
                self.bar.close()
                self.bar = None
        elif self.log_mode and (index % self.interval == 0 or index == self.steps):
            logger.info("epoch %d/%d step %d/%d loss %.4f lr %.6f img/s %.1f eta %s",
                        self.epoch, self.epochs, index, self.steps, loss, current_lr(), speed,
                        eta)


class MetricsFile:
    """``metrics.jsonl``: one JSON line per epoch. A resumed run drops the lines of the epochs
    it is about to redo, so the file always describes one consistent run; every write
    replaces the whole file atomically."""

    def __init__(self, path, keep_until_epoch, enabled):
        self.path = path
        self.enabled = enabled
        self.lines = []
        if not enabled:
            return
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, start=1):
                    record = _parse(line)
                    if record is None and line.strip():
                        logger.warning("warning: %s line %d is not a complete record (a write "
                                       "cut short): dropped", path, number)
                    elif record and record.get("epoch", 0) <= keep_until_epoch:
                        self.lines.append(line.strip())
        write_text(path, "".join(line + "\n" for line in self.lines))

    def append(self, record):
        if self.enabled:
            self.lines.append(json.dumps(record))
            write_text(self.path, "".join(line + "\n" for line in self.lines))


def _parse(line):
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def epoch_line(record, epochs, ema):
    """The log line of an epoch record: loss, lr, time, speed, validation, overflow."""
    loss = record["train_loss"]
    line = (f"epoch {record['epoch']}/{epochs} loss {'n/a' if loss is None else f'{loss:.4f}'} "
            f"lr {record['lr']:.6f} {record['train_seconds']:.1f}s")
    if record["train_images_per_s"]:
        line += f" ({record['train_images_per_s']:.1f} img/s)"
    if "val_top1" in record:
        line += (f" | val{' (EMA)' if ema else ''} top-1 {record['val_top1']:.2f}% "
                 f"top-5 {record['val_top5']:.2f}% loss {record['val_loss']:.4f}"
                 f"{' *best*' if record['best_epoch'] == record['epoch'] else ''}")
    if record.get("skipped_steps"):
        line += (f" | {record['skipped_steps']} overflow steps skipped, loss scale "
                 f"{record['loss_scale']:g}")
    return line
