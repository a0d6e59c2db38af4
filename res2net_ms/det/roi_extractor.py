"""RoI features on the device, for training: mmdetection's ``SingleRoIExtractor`` (each RoI
RoI-aligned on its own pyramid level: mmcv's ``RoIAlign``, aligned, a fixed sampling ratio),
with its gradient to the pyramid.

Computed with MindSpore's ``grid_sample`` (GridSampler2D: Ascend, GPU, CPU) on the levels
stacked into one map, because ``ROIAlign`` falls short: it widens RoIs under one feature pixel
to one pixel (the border-clipped proposals of a smaller image in a padded batch), where mmcv
samples the thin RoI itself. Each RoI's sample points (``sampling_ratio`` per bin and axis)
are placed on its level's part of the stacked map with mmcv's border rules (points beyond one
pixel outside the level count zero, others are clamped to its edge), so one call samples every
RoI on its own level only.
"""
import mindspore as ms
from mindspore import Tensor, nn, ops

__all__ = ["RoIExtractor", "map_roi_levels"]


def map_roi_levels(boxes, num_levels, finest_scale=56):
    """Level of each box (..., 4): floor(log2(sqrt(w * h) / finest_scale + 1e-6)), clamped."""
    scale = ops.sqrt((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))
    levels = ops.floor(ops.log2(scale / finest_scale + 1e-6))
    return ops.clamp(levels, 0, num_levels - 1).astype(ms.int32)


def _stack_levels(feats):
    """The levels (N, C, H_l, W_l) stacked top to bottom, padded on the right to the widest:
    the map (N, C, sum H_l, W_0) and each level's first row, height and width."""
    width = feats[0].shape[3]
    parts, tops, heights, widths, top = (), (), (), (), 0
    for feat in feats:
        parts += (ops.pad(feat, (0, width - feat.shape[3])),)
        tops += (float(top),)
        heights += (float(feat.shape[2]),)
        widths += (float(feat.shape[3]),)
        top += feat.shape[2]
    return ops.concat(parts, axis=2), tops, heights, widths


class RoIExtractor(nn.Cell):
    """RoIAlign features (N * K, C, S, S) of each image's boxes (N, K, 4) on their own level.

    Args:
        featmap_strides: strides of the levels used (P2..P5).
        output_size: bins per side (7 boxes, 14 masks).
        sampling_ratio: samples per bin and axis (> 0).
        finest_scale: boxes of sqrt(area) below 2 * finest_scale use the first level.
    """

    def __init__(self, featmap_strides=(4, 8, 16, 32), output_size=7, sampling_ratio=2,
                 finest_scale=56):
        super().__init__()
        if sampling_ratio < 1:
            raise ValueError(f"the device RoIAlign needs a fixed sampling ratio >= 1, got "
                             f"{sampling_ratio}")
        self.strides = tuple(float(s) for s in featmap_strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.finest_scale = finest_scale

    def _points(self, start, end, size):
        """Sample coordinates (N, K, S * G) along one axis of RoIs from ``start`` to ``end``
        (N, K) in level pixels, clamped into the level of ``size`` pixels, and whether each
        counts (within one pixel of the level)."""
        bins, grid = self.output_size, self.sampling_ratio
        step = ops.arange(bins * grid, dtype=ms.float32)
        bin_index = ops.floor(step / grid)
        sample = step - bin_index * grid
        bin_size = (end - start) / bins
        points = (start[..., None] + bin_index * bin_size[..., None]
                  + (sample + 0.5) * bin_size[..., None] / grid)
        inside = (points >= -1.0) & (points <= size[..., None])
        return ops.clamp(points, ops.zeros_like(points), size[..., None] - 1.0), inside

    def construct(self, feats, boxes):
        """``feats`` the pyramid (at least as many levels as strides), ``boxes`` (N, K, 4)
        x1, y1, x2, y2 in input pixels."""
        canvas, tops, heights, widths = _stack_levels(feats[:len(self.strides)])
        levels = map_roi_levels(boxes, len(self.strides), self.finest_scale)
        scale = 1.0 / Tensor(self.strides, ms.float32)[levels]
        top = Tensor(tops, ms.float32)[levels]
        xs, x_in = self._points(boxes[..., 0] * scale - 0.5, boxes[..., 2] * scale - 0.5,
                                Tensor(widths, ms.float32)[levels])
        ys, y_in = self._points(boxes[..., 1] * scale - 0.5, boxes[..., 3] * scale - 0.5,
                                Tensor(heights, ms.float32)[levels])
        ys = ys + top[..., None]
        num, count, points = xs.shape
        grid_x = ops.broadcast_to((xs / (canvas.shape[3] - 1) * 2 - 1)[:, :, None, :],
                                  (num, count, points, points))
        grid_y = ops.broadcast_to((ys / (canvas.shape[2] - 1) * 2 - 1)[:, :, :, None],
                                  (num, count, points, points))
        grid = ops.stack([grid_x, grid_y], axis=-1).reshape(num, count * points, points, 2)
        sampled = ops.grid_sample(canvas, grid, "bilinear", "zeros", True)
        inside = (y_in[:, :, :, None] & x_in[:, :, None, :]).astype(ms.float32)
        sampled = sampled * inside.reshape(num, 1, count * points, points)
        channels, bins, ratio = canvas.shape[1], self.output_size, self.sampling_ratio
        sampled = sampled.reshape(num, channels, count, bins, ratio, bins, ratio)
        pooled = sampled.sum(axis=(4, 6)) / float(ratio * ratio)
        return pooled.transpose(0, 2, 1, 3, 4).reshape(num * count, channels, bins, bins)
