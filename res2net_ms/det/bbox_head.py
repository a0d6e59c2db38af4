"""The box branch: mmdetection's ``Shared2FCBBoxHead`` and its test-time post-processing
(``BBoxHead.predict_by_feat`` with ``multiclass_nms``)."""
import mindspore as ms
import numpy as np
from mindspore import nn

from .box_coder import DeltaXYWHBBoxCoder
from .layers import softmax
from .nms import batched_nms

__all__ = ["Shared2FCBBoxHead", "multiclass_nms"]


class Shared2FCBBoxHead(nn.Cell):
    """Two shared FCs (ReLU), then class logits (background last) and box deltas, one set per
    class or, with ``reg_class_agnostic`` (the cascade stages), one for all.

    Args:
        num_classes: object classes (the classifier has one more: background, last).
        target_stds: the deltas' normalisation (mmdetection's ``bbox_coder.target_stds``).
        reg_class_agnostic: one box per RoI instead of one per class.
        in_channels, roi_feat_size: channels and bins per side of the RoI features.
        fc_out_channels: width of the shared FCs.
    """

    def __init__(self, num_classes=80, target_stds=(0.1, 0.1, 0.2, 0.2),
                 reg_class_agnostic=False, in_channels=256, roi_feat_size=7,
                 fc_out_channels=1024):
        super().__init__()
        self.num_classes = num_classes
        self.reg_class_agnostic = reg_class_agnostic
        self.coder = DeltaXYWHBBoxCoder(stds=target_stds)
        flat = in_channels * roi_feat_size * roi_feat_size
        self.shared_fcs = nn.CellList([nn.Dense(flat, fc_out_channels),
                                       nn.Dense(fc_out_channels, fc_out_channels)])
        self.fc_cls = nn.Dense(fc_out_channels, num_classes + 1)
        self.fc_reg = nn.Dense(fc_out_channels, 4 if reg_class_agnostic else 4 * num_classes)
        self.relu = nn.ReLU()

    @ms.jit
    def construct(self, roi_feats):
        """Class logits (K, C + 1) and deltas (K, 4 or 4C) of (K, 256, 7, 7) RoI features."""
        x = roi_feats.reshape(roi_feats.shape[0], -1)
        for fc in self.shared_fcs:
            x = self.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)

    def decode(self, boxes, deltas, img_shape):
        """Boxes (K, 4) or (K, 4C) from the RoIs' boxes (K, 4), clipped to ``img_shape``."""
        return self.coder.decode(boxes, deltas, max_shape=img_shape)

    def predict_by_feat(self, boxes, cls_score, bbox_pred, meta, cfg, rescale=True):
        """Detections (boxes (M, 4), scores (M,), labels (M,)) of one image from its RoIs'
        boxes (K, 4) and this head's outputs: softmax, decoding, with ``rescale`` division by
        the image's scale factor, then per-class NMS with mmdetection's ``test_cfg.rcnn``
        (``score_thr``, ``nms.iou_threshold``, ``max_per_img``)."""
        probs = softmax(cls_score)
        decoded = self.decode(boxes, bbox_pred, meta.img_shape)
        if rescale:
            w_scale, h_scale = meta.scale_factor
            decoded = decoded * np.float32([1 / w_scale, 1 / h_scale] * (decoded.shape[1] // 2))
        if not self.reg_class_agnostic:
            decoded = decoded.reshape(len(boxes), self.num_classes, 4)
        return multiclass_nms(decoded, probs[:, :self.num_classes], cfg["score_thr"],
                              cfg["nms"]["iou_threshold"], cfg["max_per_img"])


def multiclass_nms(boxes, scores, score_thr, iou_threshold, max_per_img):
    """Per-class NMS over boxes (K, C, 4), or (K, 4) shared by every class, and scores
    (K, C) (background column removed). Returns boxes (M, 4), scores (M,) and labels (M,),
    by decreasing score."""
    num_rois, num_classes = scores.shape
    if boxes.ndim == 2:
        boxes = np.broadcast_to(boxes[:, None], (num_rois, num_classes, 4))
    boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
    labels = np.tile(np.arange(num_classes), num_rois)
    valid = np.nonzero(scores > np.float32(score_thr))[0]
    boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
    keep = batched_nms(boxes, scores, labels, iou_threshold)[:max_per_img]
    return boxes[keep], scores[keep], labels[keep]
