"""Region proposal network: mmdetection's ``RPNHead`` and its test-time proposal selection."""
import numpy as np
from mindspore import nn, ops

from .box_coder import DeltaXYWHBBoxCoder
from .nms import batched_nms

__all__ = ["RPNHead", "select_proposals"]


class RPNHead(nn.Cell):
    """A shared 3x3 conv + ReLU, then per anchor an objectness (sigmoid) and 4 box deltas.

    Applied to every pyramid level; returns the objectness probabilities (N, A, H, W) and
    deltas (N, 4A, H, W) of each level. The anchors per location come from
    ``anchor_generator``, which also places them for :meth:`predict`.
    """

    def __init__(self, anchor_generator, in_channels=256, feat_channels=256, coder=None):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.coder = coder or DeltaXYWHBBoxCoder()
        num_anchors = anchor_generator.num_base_anchors
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, pad_mode="pad", padding=1,
                                  has_bias=True)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors, 1, has_bias=True)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * 4, 1, has_bias=True)
        self.relu = nn.ReLU()

    def forward_logits(self, feats):
        """Objectness logits (N, A, H, W) and deltas (N, 4A, H, W) of each level (training
        takes the logits)."""
        logits, deltas = (), ()
        for x in feats:
            x = self.relu(self.rpn_conv(x))
            logits = logits + (self.rpn_cls(x),)
            deltas = deltas + (self.rpn_reg(x),)
        return logits, deltas

    def construct(self, feats):
        logits, deltas = self.forward_logits(feats)
        scores = ()
        for logit in logits:
            scores = scores + (ops.sigmoid(logit),)
        return scores, deltas

    def predict(self, scores, deltas, img_shape, cfg):
        """Proposals (boxes (K, 4), scores (K,)) of one image from its per-level numpy
        ``scores`` (A, H, W) and ``deltas`` (4A, H, W); ``cfg`` is mmdetection's
        ``test_cfg.rpn`` (``nms_pre``, ``max_per_img``, ``nms.iou_threshold``,
        ``min_bbox_size``)."""
        anchors = self.anchor_generator.grid_anchors([s.shape[1:] for s in scores])
        return select_proposals(scores, deltas, anchors, img_shape, cfg["nms_pre"],
                                cfg["max_per_img"], cfg["nms"]["iou_threshold"],
                                cfg["min_bbox_size"], self.coder)


def select_proposals(scores, deltas, anchors, img_shape, nms_pre, max_per_img, iou_threshold,
                     min_bbox_size, coder):
    """Proposals of one image, as mmdetection's ``RPNHead.predict`` at test time.

    Per level the ``nms_pre`` best anchors are decoded (clipped to ``img_shape``), boxes not
    wider and taller than ``min_bbox_size`` dropped, NMS runs within each level and the
    ``max_per_img`` best remain. ``scores`` (A, H, W) and ``deltas`` (4A, H, W) per level, as
    numpy. Returns boxes (K, 4) and scores (K,), by decreasing score.
    """
    level_boxes, level_scores, level_ids = [], [], []
    for level, (score, delta, anchor) in enumerate(zip(scores, deltas, anchors)):
        score = score.transpose(1, 2, 0).reshape(-1)
        delta = delta.transpose(1, 2, 0).reshape(-1, 4)
        if 0 < nms_pre < score.shape[0]:
            top = np.argsort(-score, kind="stable")[:nms_pre]
            score, delta, anchor = score[top], delta[top], anchor[top]
        level_boxes.append(coder.decode(anchor, delta, max_shape=img_shape))
        level_scores.append(score)
        level_ids.append(np.full(score.shape[0], level, np.int64))
    boxes, scores = np.concatenate(level_boxes), np.concatenate(level_scores)
    level_ids = np.concatenate(level_ids)
    if min_bbox_size >= 0:
        wide = (boxes[:, 2] - boxes[:, 0] > min_bbox_size) & (
            boxes[:, 3] - boxes[:, 1] > min_bbox_size)
        boxes, scores, level_ids = boxes[wide], scores[wide], level_ids[wide]
    keep = batched_nms(boxes, scores, level_ids, iou_threshold)[:max_per_img]
    return boxes[keep], scores[keep]
