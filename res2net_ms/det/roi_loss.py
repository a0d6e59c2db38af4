"""The second stage's training losses on the device: mmdetection's ``StandardRoIHead.loss``
(assignment and sampling of the proposals, ``bbox_loss``, ``mask_loss``) in static shapes.

The sampled RoIs of an image fill a fixed number of slots, positives first, with a validity
mask: the random sampler's ``num`` (512), or every proposal with the pseudo sampler. The mask
head runs on the first ``mask_rois`` slots, which hold every positive unless an image has more
(the loss then counts those left out: ``overflow``).
"""
import mindspore as ms
from mindspore import nn, ops

from .assigner import build_assigner
from .bbox_ops import bbox2delta, bbox_overlaps
from .losses import accuracy, cross_entropy, l1_loss, mask_cross_entropy
from .mask_target import mask_target
from .roi_extractor import RoIExtractor
from .sampler import build_sampler

__all__ = ["StandardRoIHeadLoss"]


def _take(values, index):
    """``values`` (N, P, ...) at ``index`` (N, K) along the second axis."""
    if values.ndim == 2:
        return ops.gather_elements(values, 1, index)
    return ops.gather_elements(values, 1, ops.tile(index[:, :, None], (1, 1, values.shape[2])))


def _device_extractor(extractor, sampling_ratio):
    """The training graph's RoI extractor of the head's (inference) ``extractor``."""
    return RoIExtractor(extractor.featmap_strides, extractor.output_size, sampling_ratio,
                        extractor.finest_scale)


class StandardRoIHeadLoss(nn.Cell):
    """``loss_cls``, ``acc``, ``loss_bbox`` and, with a mask head, ``loss_mask`` of a batch's
    proposals, as mmdetection's ``StandardRoIHead.loss``.

    Args:
        roi_head: the detector's :class:`~.roi_head.StandardRoIHead` (its heads are used,
            their parameters keep their names).
        cfg: mmdetection's ``train_cfg.rcnn`` (``assigner``, ``sampler``, ``pos_weight``;
            its ``mask_size`` is the mask head's output, which the targets take).
        sampling_ratio: RoIAlign samples per bin and axis.
        mask_rois: slots of the mask head per image; None: the random sampler's most
            positives (``num * pos_fraction``), so that no positive is ever left out.
    """

    def __init__(self, roi_head, cfg, sampling_ratio=2, mask_rois=None):
        super().__init__(auto_prefix=False)
        self.roi_head = roi_head
        self.assigner = build_assigner(cfg["assigner"])
        self.sampler = build_sampler(cfg["sampler"])
        self.num_rois = getattr(self.sampler, "num", None)  # None: every proposal
        self.pos_weight = cfg["pos_weight"] if cfg["pos_weight"] > 0 else 1.0
        self.bbox_extractor = _device_extractor(roi_head.bbox_roi_extractor, sampling_ratio)
        self.num_classes = roi_head.bbox_head.num_classes
        self.stds = tuple(float(s) for s in roi_head.bbox_head.coder.stds)
        self.with_mask = roi_head.with_mask
        if self.with_mask:
            self.mask_extractor = _device_extractor(roi_head.mask_roi_extractor,
                                                    sampling_ratio)
            if mask_rois is None and not hasattr(self.sampler, "num_pos"):
                raise ValueError("the pseudo sampler keeps every positive: give their most "
                                 "per image as train_cfg['static']['mask_rois']")
            self.mask_rois = self.sampler.num_pos if mask_rois is None else mask_rois

    def num_priors(self, num_proposals, max_gts):
        """P, the priors an image's sampler draws from (the keys it needs)."""
        return num_proposals + (max_gts if self.sampler.add_gt_as_proposals else 0)

    def _sample(self, proposals, proposal_valid, gt_boxes, gt_valid, keys):
        """Priors (N, P, 4), their gt indices (N, P) and the sampled positives and negatives
        (N, P) drawn by ``keys`` (N, P): the proposals, after the gt boxes with
        ``add_gt_as_proposals``."""
        gt_inds = self.assigner(bbox_overlaps(gt_boxes, proposals), gt_valid, proposal_valid)
        priors, valid = proposals, proposal_valid
        if self.sampler.add_gt_as_proposals:
            own = ops.arange(1, gt_boxes.shape[1] + 1, dtype=ms.int32)[None]
            gt_inds = ops.concat([ops.broadcast_to(own, gt_valid.shape), gt_inds], axis=1)
            priors = ops.concat([gt_boxes, proposals], axis=1)
            valid = ops.concat([gt_valid, proposal_valid], axis=1)
        pos, neg = self.sampler(gt_inds, valid, keys)
        return priors, gt_inds, pos, neg

    def _slots(self, pos, neg):
        """Indices (N, K) of the sampled priors, positives first, and which are positive and
        which are used at all (N, K)."""
        num = pos.shape[1] if self.num_rois is None else min(self.num_rois, pos.shape[1])
        key = pos.astype(ms.float32) * 2.0 + neg.astype(ms.float32)
        key, slots = ops.topk(key, num)
        return slots, key > 1.5, key > 0.5

    def bbox_loss(self, feats, boxes, labels, positive, used, gt_boxes):
        """``loss_cls`` (softmax cross-entropy over the used slots), ``acc`` and ``loss_bbox``
        (L1 on the gt class's deltas of the positives, divided by the used slots) of the
        slots' boxes (N, K, 4), labels (background: ``num_classes``), masks and assigned gt
        boxes (N, K, 4)."""
        # the targets of non-positives stay zero (unit boxes: no division by zero)
        unit = ops.broadcast_to(ms.Tensor([0.0, 0.0, 1.0, 1.0], ms.float32), boxes.shape)
        targets = bbox2delta(ops.where(positive[..., None], boxes, unit),
                             ops.where(positive[..., None], gt_boxes, unit), self.stds)
        cls_score, bbox_pred = self.roi_head.bbox_head(self.bbox_extractor(feats, boxes))
        used = used.astype(ms.float32).reshape(-1)
        positive = positive.astype(ms.float32).reshape(-1)
        labels = labels.reshape(-1)
        num_rois = used.sum()
        weights = used + positive * (self.pos_weight - 1.0)
        loss_cls = cross_entropy(cls_score, labels, weights, ops.maximum(num_rois, 1.0))
        if bbox_pred.shape[1] > 4:  # one box per class: the gt class's
            fg = ops.minimum(labels, self.num_classes - 1)
            bbox_pred = ops.gather_elements(bbox_pred.reshape(-1, self.num_classes, 4), 1,
                                            ops.tile(fg[:, None, None], (1, 1, 4)))[:, 0]
        loss_bbox = l1_loss(bbox_pred, targets.reshape(-1, 4), positive[:, None], num_rois)
        return loss_cls, accuracy(cls_score, labels, used), loss_bbox

    def mask_loss(self, feats, boxes, labels, positive, slot_gt, gt_masks):
        """``loss_mask`` of the positives among the first ``mask_rois`` slots (their gt
        class's 28x28 logits against their gt mask RoI-aligned to 28x28), and the count of
        positives beyond those slots."""
        num_img, num_slots = labels.shape
        keep = min(self.mask_rois, num_slots)
        logits = self.roi_head.mask_head(self.mask_extractor(feats, boxes[:, :keep]))
        fg = ops.minimum(labels[:, :keep].reshape(-1), self.num_classes - 1)
        size = logits.shape[2]
        logits = ops.gather_elements(logits, 1, ops.tile(fg[:, None, None, None],
                                                         (1, 1, size, size)))[:, 0]
        owner = ops.arange(num_img, dtype=ms.int32)[:, None] * gt_masks.shape[1] + slot_gt
        targets = mask_target(boxes[:, :keep].reshape(-1, 4),
                              gt_masks.reshape((-1,) + gt_masks.shape[2:]),
                              owner[:, :keep].reshape(-1), size)
        weight = positive[:, :keep].astype(ms.float32).reshape(-1)
        loss_mask = mask_cross_entropy(logits, targets, weight, weight.sum())
        overflow = ops.zeros((), ms.int32)
        if keep < num_slots:
            overflow = positive[:, keep:].astype(ms.int32).sum()
        return loss_mask, overflow

    def construct(self, feats, proposals, proposal_valid, gt_boxes, gt_labels, gt_valid, keys,
                  gt_masks=None):
        """``feats`` the pyramid (P2.. first), ``proposals`` (N, R, 4) and their validity,
        ``gt_boxes`` (N, G, 4), ``gt_labels`` (N, G), ``gt_valid`` (N, G), the sampler's
        ``keys`` (N, :meth:`num_priors`), ``gt_masks`` (N, G, H, W) uint8 at the batch's
        padded size. Returns the losses and the count of positives left out of the mask
        loss."""
        priors, gt_inds, pos, neg = self._sample(proposals, proposal_valid, gt_boxes, gt_valid,
                                                 keys)
        slots, positive, used = self._slots(pos, neg)
        boxes = _take(priors, slots)
        slot_gt = ops.clamp(_take(gt_inds, slots) - 1, 0)
        labels = ops.where(positive, _take(gt_labels, slot_gt),
                           ops.full_like(slot_gt, self.num_classes))
        losses = self.bbox_loss(feats, boxes, labels, positive, used, _take(gt_boxes, slot_gt))
        if not self.with_mask:
            return losses, ops.zeros((), ms.int32)
        loss_mask, overflow = self.mask_loss(feats, boxes, labels, positive, slot_gt, gt_masks)
        return losses + (loss_mask,), overflow
