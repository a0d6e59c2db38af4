"""Box maths of the training step in MindSpore ops (graph mode, static shapes), in mmdetection's
float32 arithmetic: ``bbox_overlaps``, ``bbox2delta`` and ``delta2bbox`` (the host numpy coder
of inference is :mod:`.box_coder`).

Not MindSpore's ops: on 2.8 ``ops.iou`` of [0, 0, 10, 10] and [0, 0, 5, 10] is 0.5454, not
mmdetection's 0.5 (the old "+1" pixel areas), ``ops.BoundingBoxEncode`` adds the same "+1", and
``ops.iou`` takes 2-D boxes only."""
import math

import mindspore as ms
from mindspore import Tensor, ops

__all__ = ["bbox_overlaps", "bbox2delta", "delta2bbox", "box_area"]


def box_area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def bbox_overlaps(boxes1, boxes2):
    """IoU (..., M, K) of boxes (..., M, 4) and (..., K, 4): no "+1", the union clamped at
    1e-6, as mmdetection's ``bbox_overlaps``."""
    lt = ops.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = ops.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = ops.clamp(rb - lt, min=0.0)
    overlap = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - overlap
    return overlap / ops.clamp(union, min=1e-6)


def bbox2delta(priors, gts, stds=(1.0, 1.0, 1.0, 1.0)):
    """Deltas (..., 4) that move ``priors`` onto ``gts`` (both (..., 4)), divided by ``stds``
    (means 0), as mmdetection's ``bbox2delta``. Both must have positive widths and heights."""
    pw = priors[..., 2] - priors[..., 0]
    ph = priors[..., 3] - priors[..., 1]
    gw = gts[..., 2] - gts[..., 0]
    gh = gts[..., 3] - gts[..., 1]
    dx = ((gts[..., 0] + gts[..., 2]) * 0.5 - (priors[..., 0] + priors[..., 2]) * 0.5) / pw
    dy = ((gts[..., 1] + gts[..., 3]) * 0.5 - (priors[..., 1] + priors[..., 3]) * 0.5) / ph
    deltas = ops.stack([dx, dy, ops.log(gw / pw), ops.log(gh / ph)], axis=-1)
    return deltas / Tensor(stds, ms.float32)


def delta2bbox(priors, deltas, max_shape=None, stds=(1.0, 1.0, 1.0, 1.0),
               wh_ratio_clip=16 / 1000):
    """Boxes (..., 4) from ``priors`` and ``deltas`` (..., 4), dw and dh clamped to
    |log(wh_ratio_clip)|, clipped to ``max_shape`` ((..., 2) heights and widths, broadcast
    over the boxes) when given, as mmdetection's ``delta2bbox``."""
    deltas = deltas * Tensor(stds, ms.float32)
    max_ratio = abs(math.log(wh_ratio_clip))
    pxy = (priors[..., :2] + priors[..., 2:]) * 0.5
    pwh = priors[..., 2:] - priors[..., :2]
    gxy = pxy + pwh * deltas[..., :2]
    gwh = pwh * ops.exp(ops.clamp(deltas[..., 2:], -max_ratio, max_ratio))
    boxes = ops.concat([gxy - gwh * 0.5, gxy + gwh * 0.5], axis=-1)
    if max_shape is None:
        return boxes
    height, width = max_shape[..., None, 0:1], max_shape[..., None, 1:2]
    x1, y1, x2, y2 = ops.split(boxes, 1, axis=-1)
    zero = ops.zeros_like(x1)
    return ops.concat([ops.clamp(x1, zero, width), ops.clamp(y1, zero, height),
                       ops.clamp(x2, zero, width), ops.clamp(y2, zero, height)], axis=-1)
