"""mmdetection's detection losses (``models/losses``) in MindSpore ops, with its reductions:
a weighted sum divided by ``avg_factor + eps`` (``weight_reduce_loss``)."""
import mindspore as ms
import numpy as np
from mindspore import ops

__all__ = ["weight_reduce_loss", "binary_cross_entropy", "cross_entropy", "l1_loss",
           "mask_cross_entropy", "accuracy"]

EPS = float(np.finfo(np.float32).eps)


def weight_reduce_loss(loss, weight, avg_factor):
    """sum(loss * weight) / (avg_factor + float32 eps)."""
    return (loss * weight).sum() / (avg_factor + EPS)


def binary_cross_entropy(logits, targets, weight, avg_factor):
    """Sigmoid cross-entropy of ``logits`` against 0/1 ``targets`` (the RPN's objectness)."""
    loss = ops.binary_cross_entropy_with_logits(logits, targets, ops.ones_like(logits),
                                                ops.ones_like(logits), reduction="none")
    return weight_reduce_loss(loss, weight, avg_factor)


def cross_entropy(logits, labels, weight, avg_factor):
    """Softmax cross-entropy of ``logits`` (K, C) against class indices ``labels`` (K,)."""
    loss = ops.cross_entropy(logits, labels, reduction="none")
    return weight_reduce_loss(loss, weight, avg_factor)


def l1_loss(pred, target, weight, avg_factor):
    return weight_reduce_loss(ops.abs(pred - target), weight, avg_factor)


def mask_cross_entropy(logits, targets, weight, count):
    """Sigmoid cross-entropy of the (K, S, S) mask logits of each RoI's class against binary
    targets, averaged over the ``count`` RoIs of weight 1 and their pixels (mmdetection's
    ``mask_cross_entropy``, a mean over the positive RoIs)."""
    loss = ops.binary_cross_entropy_with_logits(logits, targets, ops.ones_like(logits),
                                                ops.ones_like(logits), reduction="none")
    pixels = logits.shape[1] * logits.shape[2]
    return (loss.sum(axis=(1, 2)) * weight).sum() / (ops.maximum(count, 1.0) * pixels)


def accuracy(logits, labels, weight):
    """Top-1 accuracy in percent over the RoIs of weight 1 (no gradient)."""
    correct = (ops.argmax(logits, dim=1).astype(ms.int32) == labels).astype(ms.float32)
    return ops.stop_gradient((correct * weight).sum() * 100.0 / ops.maximum(weight.sum(), 1.0))
