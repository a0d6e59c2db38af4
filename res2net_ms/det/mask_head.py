"""The mask branch: mmdetection's ``FCNMaskHead`` (4 convs, a 2x deconv, 28x28 logits per
class), HTC's ``HTCMaskHead`` (plus the previous stage's features) and the pasting of the
28x28 probabilities into the image (``_do_paste_mask`` as it runs on a CPU)."""
import mindspore as ms
import numpy as np
from mindspore import nn

from .layers import ConvModule

__all__ = ["FCNMaskHead", "HTCMaskHead", "predict_masks", "paste_masks", "paste_mask"]


class FCNMaskHead(nn.Cell):
    """Convs (3x3 + ReLU), a stride-2 deconv + ReLU and 1x1 logits, one map per class.

    Args:
        num_classes: classes (one logit map each).
        num_convs, in_channels, conv_out_channels: the conv tower.
    """

    def __init__(self, num_classes=80, num_convs=4, in_channels=256, conv_out_channels=256):
        super().__init__()
        self.num_classes = num_classes
        self.convs = nn.CellList([ConvModule(in_channels if i == 0 else conv_out_channels,
                                             conv_out_channels, 3) for i in range(num_convs)])
        self.upsample = nn.Conv2dTranspose(conv_out_channels, conv_out_channels, 2, stride=2,
                                           has_bias=True)
        self.conv_logits = nn.Conv2d(conv_out_channels, num_classes, 1, has_bias=True)
        self.relu = nn.ReLU()

    def tower(self, x):
        for conv in self.convs:
            x = conv(x)
        return x

    def logits(self, x):
        return self.conv_logits(self.relu(self.upsample(x)))

    @ms.jit
    def construct(self, x):
        """(K, C, 28, 28) logits of (K, 256, 14, 14) RoI features."""
        return self.logits(self.tower(x))


class HTCMaskHead(FCNMaskHead):
    """HTC's mask head: the previous stage's tower output, through ``conv_res`` (1x1 + ReLU),
    is added to the RoI features first (the mask information flow). Returns the logits and
    its own tower output for the next stage."""

    def __init__(self, with_conv_res=True, num_classes=80, num_convs=4, in_channels=256,
                 conv_out_channels=256):
        super().__init__(num_classes, num_convs, in_channels, conv_out_channels)
        self.conv_res = ConvModule(conv_out_channels, conv_out_channels, 1) \
            if with_conv_res else None

    @ms.jit
    def construct(self, x, res_feat=None):
        if res_feat is not None:
            x = x + self.conv_res(res_feat)
        feat = self.tower(x)
        return self.logits(feat), feat


def predict_masks(probs, boxes, labels, meta, cfg):
    """One image's masks (K, H, W) bool at its input size, and its boxes divided by the scale
    factor, from the (K, C, 28, 28) probabilities of its detections' boxes (K, 4) in
    network-input pixels: each label's map pasted and cut at ``cfg["mask_thr_binary"]``, as
    mmdetection's ``FCNMaskHead.predict_by_feat``."""
    boxes = boxes / np.float32(meta.scale_factor * 2)
    chosen = probs[np.arange(len(labels)), labels]
    masks = paste_masks(chosen, boxes, *meta.ori_shape, threshold=cfg["mask_thr_binary"])
    return boxes, masks


def paste_mask(prob, box, img_h, img_w):
    """One (img_h, img_w) float32 map: a (h, w) probability map resized into ``box``
    (x1, y1, x2, y2, float32) by bilinear sampling with zero padding outside the map, as
    mmdetection's ``_do_paste_mask`` (``grid_sample``, ``align_corners=False``). Only the
    box's surroundings (its bounds floored/ceiled, one pixel more) are computed; the rest
    stays 0, as mmdetection's ``skip_empty``."""
    out = np.zeros((img_h, img_w), np.float32)
    x1, y1, x2, y2 = (np.float32(v) for v in box)
    left, top = max(int(np.floor(x1)) - 1, 0), max(int(np.floor(y1)) - 1, 0)
    right, bottom = min(int(np.ceil(x2)) + 1, img_w), min(int(np.ceil(y2)) + 1, img_h)
    if right <= left or bottom <= top:
        return out
    rows = _sample_weights(np.arange(top, bottom), y1, y2, prob.shape[0])
    cols = _sample_weights(np.arange(left, right), x1, x2, prob.shape[1])
    out[top:bottom, left:right] = rows @ prob.astype(np.float32) @ cols.T
    return out


def _sample_weights(pixels, start, end, size):
    """Bilinear weights (len(pixels), size) of pixel centres within [start, end] on a map of
    ``size`` cells: grid_sample's normalised coordinate (p + 0.5 - start) / (end - start) * 2
    - 1 (float32; infinite ones, of empty boxes, become 0), unnormalised as its CPU kernel
    does ((g + 1) * size / 2 - 0.5), with zero padding outside the map."""
    centres = pixels.astype(np.float32) + np.float32(0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        grid = (centres - start) / (end - start) * np.float32(2) - np.float32(1)
    grid = np.where(np.isfinite(grid), grid, np.float32(0)).astype(np.float32)
    pos = (grid + np.float32(1)) * np.float32(size / 2) - np.float32(0.5)
    low = np.floor(pos)
    frac = (pos - low).astype(np.float32)
    low = low.astype(np.int64)
    weights = np.zeros((len(pixels), size), np.float32)
    for index, weight in ((low, np.float32(1) - frac), (low + 1, frac)):
        inside = (index >= 0) & (index < size)
        weights[np.nonzero(inside)[0], index[inside]] += weight[inside]
    return weights


def paste_masks(probs, boxes, img_h, img_w, threshold=0.5):
    """(K, img_h, img_w) bool masks: each (h, w) probability map of ``probs`` pasted into
    its box (input-image pixels) and kept where it is at least ``threshold``."""
    masks = np.zeros((len(probs), img_h, img_w), bool)
    for k, (prob, box) in enumerate(zip(probs, boxes)):
        masks[k] = paste_mask(prob, box, img_h, img_w) >= np.float32(threshold)
    return masks
