"""mmdetection's anchor generator (``AnchorGenerator``): float base anchors centred on the
top-left corner of each feature cell (``center_offset=0``), not rounded as torchvision's; the
anchors of a level are laid on the host (inference) or in the training graph
(:func:`device_grid_anchors`), in the same float32 arithmetic."""
import mindspore as ms
import numpy as np
from mindspore import ops

__all__ = ["AnchorGenerator", "device_grid_anchors"]


class AnchorGenerator:
    """Anchors of every level, in (x1, y1, x2, y2) input pixels, ordered as the heads' outputs:
    row by row over the feature map, the ``len(ratios) * len(scales)`` anchors of a cell last.

    Args:
        strides: feature stride of each level; also the base anchor size of the level.
        ratios: height / width ratios.
        scales: anchor sizes in units of the stride.
        center_offset: anchor centre within a cell, in strides (0: the cell's corner).
    """

    def __init__(self, strides=(4, 8, 16, 32, 64), ratios=(0.5, 1.0, 2.0), scales=(8,),
                 center_offset=0.0):
        self.strides = tuple(strides)
        self.ratios = np.asarray(ratios, np.float32)
        self.scales = np.asarray(scales, np.float32)
        self.center_offset = center_offset
        self.num_base_anchors = len(ratios) * len(scales)

    def base_anchors(self, stride):
        """(A, 4) anchors of one cell at the origin, ratio-major as mmdetection's."""
        size = np.float32(stride)
        h_ratios = np.sqrt(self.ratios)
        w_ratios = np.float32(1) / h_ratios
        ws = (size * w_ratios[:, None] * self.scales[None, :]).reshape(-1)
        hs = (size * h_ratios[:, None] * self.scales[None, :]).reshape(-1)
        centre = np.float32(self.center_offset * stride)
        half = np.float32(0.5)
        return np.stack([centre - half * ws, centre - half * hs, centre + half * ws,
                         centre + half * hs], axis=-1)

    def grid_anchors(self, featmap_sizes):
        """For each level's (H, W), its (H * W * A, 4) anchors."""
        out = []
        for (height, width), stride in zip(featmap_sizes, self.strides):
            xs = np.arange(width, dtype=np.float32) * np.float32(stride)
            ys = np.arange(height, dtype=np.float32) * np.float32(stride)
            xx, yy = np.tile(xs, height), np.repeat(ys, width)
            shifts = np.stack([xx, yy, xx, yy], axis=-1)
            out.append((self.base_anchors(stride)[None] + shifts[:, None]).reshape(-1, 4))
        return out


def device_grid_anchors(base_anchors, height, width, stride):
    """In MindSpore ops: the anchors (H * W * A, 4) of a level, as
    :meth:`AnchorGenerator.grid_anchors` lays them, and each anchor's cell corner x and y
    (H * W * A,) (for the valid flags)."""
    xs = ops.arange(width, dtype=ms.float32) * stride
    ys = ops.arange(height, dtype=ms.float32) * stride
    xx = ops.tile(xs, (height,))
    yy = ops.repeat_interleave(ys, width)
    shifts = ops.stack([xx, yy, xx, yy], axis=-1)
    num_base = base_anchors.shape[0]
    anchors = (base_anchors[None] + shifts[:, None]).reshape(-1, 4)
    return anchors, ops.repeat_interleave(xx, num_base), ops.repeat_interleave(yy, num_base)
