"""Top-1 / top-5 / loss / images-per-second over a validation loader.

The network returns *counts* (correct top-1, correct top-k, summed loss) rather than
averages, so that the counts of all ranks can be summed: the distributed top-1 is then
exactly the single-device top-1, whatever the shard sizes. The last batch is padded to the
full batch size and masked, so the graph compiles for one input shape only.
"""
import contextlib
import time

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from ..compile_cache import compile_cell

__all__ = ["EvalNet", "ema_weights", "evaluate", "sum_over_ranks", "average_bn_statistics"]


class EvalNet(nn.Cell):
    """``(loss_sum, top1, topk) = net(images, labels, valid)``: sums over the first ``valid``."""

    def __init__(self, network, topk=5):
        super().__init__(auto_prefix=False)
        self.network = network
        self.topk = topk

    def construct(self, images, labels, valid):
        logits = ops.cast(self.network(images), ms.float32)
        mask = ops.cast(ops.arange(labels.shape[0]) < valid, ms.float32)
        losses = ops.cross_entropy(logits, labels, reduction="none")
        _, top = ops.topk(logits, self.topk)
        hits = ops.cast(top == labels.reshape((-1, 1)), ms.float32)
        top1 = (hits[:, 0] * mask).sum()
        topk = (hits.sum(axis=1) * mask).sum()
        return (losses * mask).sum(), top1, topk


@contextlib.contextmanager
def ema_weights(ema):
    """The EMA weights of ``ema`` in place of the network's for the ``with`` block (nothing
    changes without ``ema``)."""
    if ema is None:
        yield
        return
    saved = [param.asnumpy().copy() for param in ema.weights]
    for param, avg in zip(ema.weights, ema.ema_weights):
        param.set_data(Tensor(avg.asnumpy()))
    try:
        yield
    finally:
        for param, value in zip(ema.weights, saved):
            param.set_data(Tensor(value))


class _AllReduceSum(nn.Cell):
    def __init__(self):
        super().__init__()
        self.reduce = ops.AllReduce(ops.ReduceOp.SUM)

    def construct(self, x):
        return self.reduce(x)


def sum_over_ranks(values):
    """Element-wise sum of a float array over all ranks (one AllReduce, one compile)."""
    values = np.asarray(values, dtype=np.float32)
    return _AllReduceSum()(Tensor(values.ravel())).asnumpy().reshape(values.shape)


def average_bn_statistics(params, group_size):
    """Average BN running statistics over the ranks (timm's ``--dist-bn reduce``).

    Data parallelism keeps the weights equal on every rank, but each BN updates its running
    statistics from its own rank's batches: without this, the ranks would validate different
    networks and the checkpoint (rank 0's) would not be the network that was validated.
    """
    stats = [p for p in params if "moving_" in p.name]
    if not stats:
        return
    total = sum_over_ranks(np.concatenate([p.asnumpy().ravel() for p in stats])) / group_size
    offset = 0
    for p in stats:
        p.set_data(Tensor(total[offset:offset + p.size].reshape(p.shape), p.dtype))
        offset += p.size


def evaluate(eval_net, data, batch_size, distributed=False, ema=None):
    """Evaluate an :class:`EvalNet` (put in inference mode here) on every batch of ``data``
    (a :class:`~res2net_ms.data.EvalData`), with the weights of ``ema`` if given.

    Keep one ``eval_net`` per network: graph mode compiles each cell instance once.
    Returns ``{"top1", "top5", "loss", "images", "images_per_s", "seconds"}``, and
    ``"bad_images_skipped"`` when undecodable files were left out; top-1/top-5 in percent.
    ``images_per_s`` leaves out the first batch, which includes the compile. With
    ``distributed`` the counts of all ranks are summed first.
    """
    network = eval_net.network
    was_training = network.training
    eval_net.set_train(False)
    sums = np.zeros(5, dtype=np.float64)
    start = time.perf_counter()
    steady_start, steady_images = None, 0
    with ema_weights(ema):
        for images, labels in data.batches():
            n = images.shape[0]
            if n < batch_size:
                pad = batch_size - n
                images = np.concatenate([images, np.zeros((pad,) + images.shape[1:],
                                                          images.dtype)])
                labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
            inputs = Tensor(images), Tensor(labels), Tensor(n, ms.int32)
            if steady_start is None:
                compile_cell(eval_net, *inputs, what="evaluation")
            out = eval_net(*inputs)
            sums[:4] += [float(out[0].asnumpy()), float(out[1].asnumpy()),
                         float(out[2].asnumpy()), n]
            if steady_start is None:
                steady_start = time.perf_counter()
            else:
                steady_images += n
    end = time.perf_counter()
    sums[4] = len(data.skipped)
    if distributed:
        sums = sum_over_ranks(sums).astype(np.float64)
    network.set_train(was_training)
    count = int(round(sums[3]))
    if steady_images:
        speed = steady_images / max(end - steady_start, 1e-9)
    else:
        speed = count / max(end - start, 1e-9)
    result = {
        "top1": 100.0 * sums[1] / max(count, 1),
        "top5": 100.0 * sums[2] / max(count, 1),
        "loss": sums[0] / max(count, 1),
        "images": count,
        "images_per_s": speed,
        "seconds": end - start,
    }
    if sums[4]:
        result["bad_images_skipped"] = int(round(sums[4]))
    return result
