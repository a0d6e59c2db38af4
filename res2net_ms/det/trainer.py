"""Training a detector on a COCO-format set: mmdetection's schedule (SGD with momentum 0.9 and
weight decay 1e-4, linear warm-up over 500 iterations from 0.001 of the rate, the rate times
0.1 at each milestone epoch) and one compiled :class:`~.train_step.TrainStep` per batch."""
import time

import numpy as np
from mindspore import Tensor, nn

from .train_step import TrainStep, check_overflow

__all__ = ["lr_schedule", "train_detector"]


def lr_schedule(epochs, steps_per_epoch, lr, milestones=(), warmup_iters=500,
                warmup_ratio=0.001, gamma=0.1):
    """The rate of every iteration: mmdetection's ``LinearLR`` (by iteration, ``end`` =
    ``warmup_iters``) times its ``MultiStepLR`` (by epoch)."""
    rates = []
    for step in range(epochs * steps_per_epoch):
        rate = lr * gamma ** sum(step >= m * steps_per_epoch for m in milestones)
        if step < warmup_iters - 1:  # mmengine's LinearLR reaches 1 at its last iteration
            rate *= warmup_ratio + (1 - warmup_ratio) * step / (warmup_iters - 1)
        rates.append(rate)
    return np.float32(rates)


def train_detector(detector, data, epochs, batch_size=2, lr=0.02 * 2 / 16, milestones=(),
                   warmup_iters=500, momentum=0.9, weight_decay=1e-4, seed=0, log=print,
                   log_interval=50):
    """Train ``detector`` on ``data`` (a :class:`~.train_data.CocoTrainSet` of its classes)
    for ``epochs``; returns the mean loss terms of each epoch (mmdetection's names).

    ``lr`` is for ``batch_size`` images: mmdetection's 0.02 is for 16 (its auto-scale-lr
    scales it linearly)."""
    if tuple(data.class_names) != tuple(detector.class_names):
        raise ValueError(f"the data's classes {data.class_names} are not the detector's "
                         f"{detector.class_names}")
    steps_per_epoch = data.steps_per_epoch(batch_size)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(data)} training images make no batch of {batch_size}")
    rates = lr_schedule(epochs, steps_per_epoch, lr, milestones, warmup_iters)
    optimizer = nn.SGD(detector.trainable_params(), learning_rate=Tensor(rates),
                       momentum=momentum, weight_decay=weight_decay)
    loss_cell = detector.loss_cell()
    step = TrainStep(loss_cell, optimizer)
    history, start, done = [], time.perf_counter(), 0
    for epoch in range(epochs):
        sums = np.zeros(len(loss_cell.names))
        for images, targets, seeds in data.batches(batch_size, epoch, seed):
            _, losses, overflow, _ = step(*loss_cell.inputs(images, targets, seeds))
            check_overflow(overflow, loss_cell)
            values = np.array([float(v.asnumpy()) for v in losses])
            if not np.all(np.isfinite(values)):
                raise FloatingPointError(f"epoch {epoch + 1}, step {done + 1}: a loss is not "
                                         f"finite ({dict(zip(loss_cell.names, values))})")
            sums += values
            done += 1
            if done % log_interval == 0 or done == 1:
                terms = " ".join(f"{n} {v:.4f}" for n, v in zip(loss_cell.names, values))
                log(f"epoch {epoch + 1}/{epochs} step {done}/{epochs * steps_per_epoch} "
                    f"lr {rates[done - 1]:.5f} {terms} ({time.perf_counter() - start:.0f} s)")
        history.append(dict(zip(loss_cell.names, sums / steps_per_epoch)))
    detector.set_train(False)
    return history
