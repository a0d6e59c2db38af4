"""Mask targets on the device: each positive RoI's ground-truth mask RoI-aligned to S x S and
binarised at 0.5, as mmdetection's ``mask_target`` (``BitmapMasks.crop_and_resize``: mmcv
RoIAlign, aligned, spatial scale 1, ADAPTIVE sampling: ceil(roi_size / S) samples per bin).

MindSpore's ``ROIAlign`` has no exact adaptive mode (it takes floor(roi_size / S) samples), so
this computes it: bilinear sampling on a regular grid is separable, every target is
``Wy @ mask @ Wx.T / count``, where a row of ``Wy`` (``Wx``) holds the interpolation weights of
one bin's sample rows (columns), summed over its samples, with mmcv's border rules. The
weights are scattered (``ScatterNd``) from at most ceil(size / S) samples per bin.
"""
import mindspore as ms
from mindspore import ops

__all__ = ["mask_target"]


def _axis_weights(start, end, out_size, size):
    """Weights (K, out_size, size) of one axis for RoIs from ``start`` to ``end`` (K,) in
    pixels, and the number of samples per bin along it (K,)."""
    start = start - 0.5
    length = (end - 0.5) - start
    bin_size = length / out_size
    grid = ops.ceil(length / out_size)
    max_grid = -(-size // out_size)
    p = ops.arange(out_size, dtype=ms.float32)[None, :, None]
    i = ops.arange(max_grid, dtype=ms.float32)[None, None, :]
    pos = (start[:, None, None] + p * bin_size[:, None, None]
           + (i + 0.5) * bin_size[:, None, None] / ops.maximum(grid, 1.0)[:, None, None])
    used = (i < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = ops.maximum(pos, 0.0)
    low = ops.floor(pos)
    at_end = low >= size - 1
    low = ops.where(at_end, ops.full_like(low, size - 1), low)
    frac = ops.where(at_end, ops.zeros_like(pos), pos - low)
    high = ops.where(at_end, low, low + 1)
    used = used.astype(ms.float32)
    num = start.shape[0]
    rows = ops.tile(ops.arange(num * out_size, dtype=ms.int32).reshape(num, out_size, 1),
                    (1, 1, max_grid))
    index = ops.stack([ops.concat([rows, rows], axis=2),
                       ops.concat([low, high], axis=2).astype(ms.int32)], axis=-1)
    weight = ops.concat([(1.0 - frac) * used, frac * used], axis=2)
    weights = ops.scatter_nd(index.reshape(-1, 2), weight.reshape(-1), (num * out_size, size))
    return weights.reshape(num, out_size, size), grid


def mask_target(boxes, masks, inds, mask_size=28):
    """Binary float targets (K, S, S) of RoIs ``boxes`` (K, 4) on the masks ``masks[inds]``
    ((M, H, W) 0/1, ``inds`` (K,)); boxes are clipped to the masks' size first."""
    height, width = masks.shape[1], masks.shape[2]
    x1 = ops.clamp(boxes[:, 0], 0.0, float(width))
    y1 = ops.clamp(boxes[:, 1], 0.0, float(height))
    x2 = ops.clamp(boxes[:, 2], 0.0, float(width))
    y2 = ops.clamp(boxes[:, 3], 0.0, float(height))
    wy, grid_h = _axis_weights(y1, y2, mask_size, height)
    wx, grid_w = _axis_weights(x1, x2, mask_size, width)
    chosen = masks[inds].astype(ms.float32)
    sampled = ops.bmm(ops.bmm(wy, chosen), wx.transpose(0, 2, 1))
    count = ops.maximum(grid_h * grid_w, 1.0)[:, None, None]
    return ops.stop_gradient((sampled / count >= 0.5).astype(ms.float32))
