"""Non-maximum suppression exactly as torchvision's ``nms`` / ``batched_nms`` (and mmcv's).

Host numpy, because MindSpore's ``NMSWithMask`` does not sort by score on CPU and ignores the
scores (at most 2864 boxes) on Ascend; a greedy NMS with torchvision's float32 IoU is exact and
takes milliseconds at detection sizes.
"""
import numpy as np

__all__ = ["nms", "batched_nms"]


def nms(boxes, scores, iou_threshold):
    """Indices of the boxes kept, by decreasing score (ties: lower index first).

    A box is suppressed by a kept higher-scoring box when their IoU (float32, no "+1") is
    greater than ``iou_threshold``. ``boxes`` (N, 4) x1, y1, x2, y2; ``scores`` (N,).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (np.ascontiguousarray(c) for c in boxes[order].T)
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    rest = np.arange(len(order))
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 for empty boxes: kept, as C++
        while rest.size:
            i, rest = rest[0], rest[1:]
            keep.append(i)
            w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
            h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)
            rest = rest[~(iou.astype(np.float64) > iou_threshold)]
    return order[np.asarray(keep, np.int64)]


def batched_nms(boxes, scores, idxs, iou_threshold, split_thr=10000):
    """NMS within each category ``idxs``; indices kept, by decreasing score.

    Below ``split_thr`` boxes the categories are separated by coordinate offsets, as mmcv
    (``split_thr`` 10000, mmdetection's default) and torchvision on CPU (up to 1000 boxes,
    ``split_thr=1001``) do; from ``split_thr`` on, one NMS runs per category.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    idxs = np.asarray(idxs).reshape(-1)
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    if boxes.shape[0] < split_thr:
        offsets = idxs.astype(np.float32) * (boxes.max() + np.float32(1))
        return nms(boxes + offsets[:, None], scores, iou_threshold)
    keep = np.zeros(boxes.shape[0], bool)
    for category in np.unique(idxs):
        members = np.nonzero(idxs == category)[0]
        keep[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = np.nonzero(keep)[0]
    return kept[np.argsort(-scores[kept], kind="stable")]
