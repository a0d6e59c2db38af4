"""The second stage: RoI features from the pyramid, the shared-FC box head and per-class
post-processing (mmdetection's ``StandardRoIHead`` with ``Shared2FCBBoxHead`` at test time)."""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .box_coder import DeltaXYWHBBoxCoder
from .nms import batched_nms
from .roi_align import roi_align

__all__ = ["map_roi_levels", "SingleRoIExtractor", "Shared2FCBBoxHead", "multiclass_nms",
           "RoIHead"]


def map_roi_levels(rois, num_levels=4, finest_scale=56):
    """Pyramid level of each RoI: floor(log2(sqrt(w * h) / finest_scale + 1e-6)), clamped."""
    scale = np.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = np.floor(np.log2(scale / np.float32(finest_scale) + np.float32(1e-6)))
    return np.clip(levels, 0, num_levels - 1).astype(np.int64)


class SingleRoIExtractor:
    """RoIAlign features (K, C, 7, 7) of each RoI on its own pyramid level.

    Args:
        featmap_strides: strides of the levels used (P2..P5).
        output_size: bins per side.
        sampling_ratio: samples per bin and axis (0: adaptive, ceil(roi_size / bins)).
        aligned: half-pixel aligned boxes.
        finest_scale: RoIs of ``sqrt(area)`` below ``2 * finest_scale`` use the first level.
    """

    def __init__(self, featmap_strides=(4, 8, 16, 32), output_size=7, sampling_ratio=0,
                 aligned=True, finest_scale=56):
        self.featmap_strides = tuple(featmap_strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.finest_scale = finest_scale

    def __call__(self, feats, rois):
        """``feats``: numpy levels (N, C, H, W); ``rois`` (K, 5) batch index, x1, y1, x2, y2."""
        channels = feats[0].shape[1]
        out = np.zeros((len(rois), channels, self.output_size, self.output_size), np.float32)
        levels = map_roi_levels(rois, len(self.featmap_strides), self.finest_scale)
        for level, stride in enumerate(self.featmap_strides):
            members = np.nonzero(levels == level)[0]
            if members.size:
                out[members] = roi_align(feats[level], rois[members], self.output_size,
                                         1.0 / stride, self.sampling_ratio, self.aligned)
        return out


class Shared2FCBBoxHead(nn.Cell):
    """Two shared FCs (ReLU), then class probabilities (background last) and per-class deltas.

    Args:
        in_channels: channels of the RoI features.
        roi_feat_size: bins per side of the RoI features.
        fc_out_channels: width of the shared FCs.
        num_classes: object classes (the classifier has one more: background, last).
    """

    def __init__(self, in_channels=256, roi_feat_size=7, fc_out_channels=1024, num_classes=80):
        super().__init__()
        self.num_classes = num_classes
        flat = in_channels * roi_feat_size * roi_feat_size
        self.shared_fcs = nn.CellList([nn.Dense(flat, fc_out_channels),
                                       nn.Dense(fc_out_channels, fc_out_channels)])
        self.fc_cls = nn.Dense(fc_out_channels, num_classes + 1)
        self.fc_reg = nn.Dense(fc_out_channels, num_classes * 4)
        self.relu = nn.ReLU()

    @ms.jit
    def construct(self, roi_feats):
        x = roi_feats.reshape(roi_feats.shape[0], -1)
        for fc in self.shared_fcs:
            x = self.relu(fc(x))
        return ops.softmax(self.fc_cls(x), axis=-1), self.fc_reg(x)


def multiclass_nms(boxes, scores, score_thr=0.05, iou_threshold=0.5, max_per_img=100):
    """Per-class NMS over (K, C, 4) boxes and (K, C) scores (background column removed).

    Returns boxes (M, 4), scores (M,) and labels (M,), by decreasing score.
    """
    num_classes = scores.shape[1]
    boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
    labels = np.tile(np.arange(num_classes), len(scores) // max(num_classes, 1))
    valid = np.nonzero(scores > np.float32(score_thr))[0]
    boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
    keep = batched_nms(boxes, scores, labels, iou_threshold)[:max_per_img]
    return boxes[keep], scores[keep], labels[keep]


class RoIHead(nn.Cell):
    """Boxes, scores and labels of one image from its proposals (test time).

    ``bbox_head`` runs as a graph on a fixed number of RoIs (``max_rois``, zero-padded), so
    that it compiles once; the rest is host numpy.
    """

    def __init__(self, num_classes=80, max_rois=1000, score_thr=0.05, iou_threshold=0.5,
                 max_per_img=100):
        super().__init__()
        self.bbox_roi_extractor = SingleRoIExtractor()
        self.bbox_head = Shared2FCBBoxHead(num_classes=num_classes)
        self.coder = DeltaXYWHBBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
        self.max_rois = max_rois
        self.score_thr = score_thr
        self.iou_threshold = iou_threshold
        self.max_per_img = max_per_img

    def predict(self, feats, proposals, img_shape, scale_factor):
        """``feats``: numpy levels of one image; ``proposals`` (K, 4) in network-input pixels.

        Boxes come back in input-image pixels (divided by ``scale_factor`` (w, h)).
        """
        num_classes = self.bbox_head.num_classes
        if len(proposals) == 0:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros(
                (0,), np.int64)
        rois = np.concatenate([np.zeros((len(proposals), 1), np.float32), proposals], axis=1)
        roi_feats = self.bbox_roi_extractor(feats, rois)
        probs, deltas = self.forward_box_head(roi_feats)
        boxes = self.coder.decode(proposals, deltas, max_shape=img_shape)
        w_scale, h_scale = scale_factor
        boxes = boxes * np.float32([1 / w_scale, 1 / h_scale] * 2 * num_classes)
        return multiclass_nms(boxes.reshape(len(rois), num_classes, 4), probs[:, :num_classes],
                              self.score_thr, self.iou_threshold, self.max_per_img)

    def forward_box_head(self, roi_feats):
        """Class probabilities and deltas, run in chunks of ``max_rois`` (one compiled shape)."""
        probs, deltas = [], []
        for start in range(0, len(roi_feats), self.max_rois):
            chunk = roi_feats[start:start + self.max_rois]
            padded = np.zeros((self.max_rois,) + chunk.shape[1:], np.float32)
            padded[:len(chunk)] = chunk
            p, d = self.bbox_head(Tensor(padded))
            probs.append(p.asnumpy()[:len(chunk)])
            deltas.append(d.asnumpy()[:len(chunk)])
        return np.concatenate(probs), np.concatenate(deltas)

