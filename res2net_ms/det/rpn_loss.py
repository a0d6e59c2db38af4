"""The RPN's training losses on the device: mmdetection's ``AnchorHead.get_targets`` and
``RPNHead.loss_by_feat`` over the anchors of a padded batch (static shapes)."""
import mindspore as ms
from mindspore import nn, ops

from .assigner import build_assigner
from .bbox_ops import bbox2delta, bbox_overlaps
from .losses import binary_cross_entropy, l1_loss
from .sampler import build_sampler

__all__ = ["RPNLoss"]


class RPNLoss(nn.Cell):
    """``loss_rpn_cls`` (sigmoid cross-entropy) and ``loss_rpn_bbox`` (L1 on the deltas of
    the positives), both divided by the positives' count (plus the negatives' with the random
    sampler), as mmdetection. Anchors with ``allowed_border`` -1 (mmdetection's): every anchor
    of the image's padded area (a multiple of 32), others too within ``allowed_border`` of the
    image when >= 0.

    Args:
        cfg: mmdetection's ``train_cfg.rpn`` (``assigner``, ``sampler``, ``allowed_border``,
            ``pos_weight``).
        stds: the RPN's box coder's ``stds``.
    """

    def __init__(self, cfg, stds):
        super().__init__()
        self.assigner = build_assigner(cfg["assigner"])
        self.sampler = build_sampler(cfg["sampler"])
        self.allowed_border = cfg["allowed_border"]
        self.pos_weight = cfg["pos_weight"] if cfg["pos_weight"] > 0 else 1.0
        self.stds = stds

    def _inside(self, anchors, valid, img_shapes):
        if self.allowed_border < 0:
            return valid
        border = self.allowed_border
        height, width = img_shapes[:, 0:1], img_shapes[:, 1:2]
        return (valid & (anchors[None, :, 0] >= -border) & (anchors[None, :, 1] >= -border)
                & (anchors[None, :, 2] < width + border) & (anchors[None, :, 3] < height + border))

    def construct(self, logits, deltas, anchors, valid, img_shapes, gt_boxes, gt_valid, keys):
        """``logits`` (N, T) and ``deltas`` (N, T, 4) of the T anchors (T, 4) of all levels,
        ``valid`` (N, T) the anchors within each image's padded area, ``img_shapes`` (N, 2),
        ``gt_boxes`` (N, G, 4), ``gt_valid`` (N, G) and the sampler's ``keys`` (N, T).
        Returns the two losses."""
        valid = self._inside(anchors, valid, img_shapes)
        gt_inds = self.assigner(bbox_overlaps(gt_boxes, anchors[None]), gt_valid, valid)
        pos, neg = self.sampler(gt_inds, valid, keys)
        num_pos = ops.maximum(pos.astype(ms.float32).sum(axis=1), 1.0)
        avg_factor = num_pos.sum()
        if self.sampler.avg_factor_with_neg:
            avg_factor = avg_factor + ops.maximum(neg.astype(ms.float32).sum(axis=1), 1.0).sum()
        pos_f = pos.astype(ms.float32)
        weights = pos_f * self.pos_weight + neg.astype(ms.float32)
        loss_cls = binary_cross_entropy(logits, pos_f, weights, avg_factor)
        assigned = ops.gather_elements(
            gt_boxes, 1, ops.tile(ops.clamp(gt_inds - 1, 0)[:, :, None], (1, 1, 4)))
        priors = ops.broadcast_to(anchors[None], assigned.shape)
        targets = bbox2delta(priors, ops.where(pos[..., None], assigned, priors), self.stds)
        loss_bbox = l1_loss(deltas, targets, pos_f[..., None], avg_factor)
        return loss_cls, loss_bbox

