"""mmdetection's ``DeltaXYWHBBoxCoder`` (2.x/3.x): no "+1" in widths, dw/dh clamped.

MindSpore's ``BoundingBoxDecode`` is the legacy "+1" coder of mmdetection 1.x, hence this one.
"""
import math

import numpy as np

__all__ = ["DeltaXYWHBBoxCoder"]


class DeltaXYWHBBoxCoder:
    """Decodes (dx, dy, dw, dh) deltas against reference boxes, in float32 as mmdetection.

    Args:
        means, stds: the deltas were normalised as ``(delta - mean) / std``.
        wh_ratio_clip: dw and dh are clamped to +-|log(wh_ratio_clip)| (log(1000/16)).
    """

    def __init__(self, means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0),
                 wh_ratio_clip=16 / 1000):
        self.means = np.asarray(means, np.float32)
        self.stds = np.asarray(stds, np.float32)
        self.max_ratio = np.float32(abs(math.log(wh_ratio_clip)))

    def decode(self, rois, deltas, max_shape=None):
        """Boxes (N, 4 * K) from ``rois`` (N, 4) and ``deltas`` (N, 4 * K), clipped to
        ``max_shape`` (height, width) when given."""
        rois = np.asarray(rois, np.float32)
        deltas = np.asarray(deltas, np.float32)
        num, per_roi = deltas.shape[0], deltas.shape[1] // 4
        deltas = deltas.reshape(-1, 4) * self.stds + self.means
        rois = np.repeat(rois, per_roi, axis=0)
        centres = (rois[:, :2] + rois[:, 2:]) * np.float32(0.5)
        sizes = rois[:, 2:] - rois[:, :2]
        dwh = np.clip(deltas[:, 2:], -self.max_ratio, self.max_ratio)
        new_centres = centres + sizes * deltas[:, :2]
        half = sizes * np.exp(dwh) * np.float32(0.5)
        boxes = np.concatenate([new_centres - half, new_centres + half], axis=1)
        if max_shape is not None:
            height, width = max_shape
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, np.float32(width))
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, np.float32(height))
        return boxes.reshape(num, 4 * per_roi)
