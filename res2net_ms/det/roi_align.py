"""RoIAlign as mmcv and torchvision compute it (average of bilinear samples per bin).

Our own, in host numpy: MindSpore's ``ROIAlign`` takes floor(roi_size / bins) samples per bin
where mmcv and torchvision take the ceiling (adaptive ``sampling_ratio=0``, mmdetection's
setting), and gives NaN for RoIs smaller than a bin.

Bilinear sampling on a regular grid is separable: every output bin is ``Wy @ F @ Wx.T``, with
``Wy`` (``Wx``) the interpolation weights of the bin's sample rows (columns), averaged over the
samples. The weights follow torchvision's float32 arithmetic (sample positions, the "-1 .. size"
validity range, the clamp at the last row/column), so only the order of the sums differs.
"""
import numpy as np

__all__ = ["roi_align"]


def _axis_weights(start, length, pooled, size, sampling_ratio):
    """Weights (K, pooled, size) of one axis and the number of samples per bin along it."""
    bin_size = length / np.float32(pooled)
    if sampling_ratio > 0:
        grid = np.full(len(start), sampling_ratio, np.int64)
    else:
        grid = np.ceil(length / np.float32(pooled)).astype(np.int64)
    samples = max(int(grid.max(initial=0)), 1)
    p = np.arange(pooled, dtype=np.float32)[None, :, None]
    i = np.arange(samples, dtype=np.float32)[None, None, :]
    start, bin_size = start[:, None, None], bin_size[:, None, None]
    grid_f = np.maximum(grid, 1).astype(np.float32)[:, None, None]
    pos = (start + p * bin_size) + ((i + np.float32(0.5)) * bin_size) / grid_f
    valid = (i < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = np.maximum(pos, np.float32(0))
    low = pos.astype(np.int64)
    at_end = low >= size - 1
    low = np.where(at_end, size - 1, low)
    high = np.where(at_end, size - 1, low + 1)
    frac = np.where(at_end, np.float32(0), pos - low.astype(np.float32)).astype(np.float32)
    weights = np.zeros((len(start), pooled, size), np.float32)
    k, b, _ = np.nonzero(valid)
    np.add.at(weights, (k, b, low[valid]), (np.float32(1) - frac)[valid])
    np.add.at(weights, (k, b, high[valid]), frac[valid])
    return weights, grid


def roi_align(features, rois, output_size=7, spatial_scale=1.0, sampling_ratio=0, aligned=True):
    """RoIAlign of ``rois`` (K, 5: batch index, x1, y1, x2, y2) on ``features`` (N, C, H, W).

    Returns (K, C, out_h, out_w) float32. ``aligned`` shifts the box by half a pixel (mmcv's
    and torchvision's ``aligned=True``); ``sampling_ratio`` 0 takes ceil(roi_size / bins)
    samples per bin along each axis.
    """
    features = np.asarray(features, np.float32)
    rois = np.asarray(rois, np.float32).reshape(-1, 5)
    out_h, out_w = (output_size, output_size) if np.isscalar(output_size) else output_size
    n, channels, height, width = features.shape
    out = np.zeros((len(rois), out_h, out_w, channels), np.float32)
    if len(rois) == 0:
        return out.transpose(0, 3, 1, 2)
    offset = np.float32(0.5 if aligned else 0.0)
    scale = np.float32(spatial_scale)
    x1, y1, x2, y2 = (rois[:, j] * scale - offset for j in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = np.maximum(roi_w, np.float32(1)), np.maximum(roi_h, np.float32(1))
    wy, grid_h = _axis_weights(y1, roi_h, out_h, height, sampling_ratio)
    wx, grid_w = _axis_weights(x1, roi_w, out_w, width, sampling_ratio)
    count = np.maximum(grid_h * grid_w, 1).astype(np.float32)
    rows, cols = wy.any(axis=1), wx.any(axis=1)
    hwc = [np.ascontiguousarray(features[b].transpose(1, 2, 0)) for b in range(n)]
    for k, b in enumerate(rois[:, 0].astype(np.int64)):
        ys, xs = np.nonzero(rows[k])[0], np.nonzero(cols[k])[0]
        if ys.size == 0 or xs.size == 0:
            continue
        top, bottom, left, right = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        crop = hwc[b][top:bottom, left:right].reshape(bottom - top, -1)  # the RoI's window
        rows_done = (wy[k, :, top:bottom] @ crop).reshape(out_h, right - left, channels)
        out[k] = np.matmul(wx[k, :, left:right], rows_done) / count[k]
    return out.transpose(0, 3, 1, 2)
