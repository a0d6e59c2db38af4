"""mmdetection's ``MaxIoUAssigner`` in MindSpore ops, over a batch of padded ground truth."""
import mindspore as ms
from mindspore import nn, ops

__all__ = ["MaxIoUAssigner", "build_assigner"]


class MaxIoUAssigner(nn.Cell):
    """Each prior (anchor or proposal) gets a ground-truth index from its IoUs, in
    mmdetection's order: all ignored (-1); max IoU in [0, ``neg_iou_thr``) negative (0); max
    IoU >= ``pos_iou_thr`` the best gt (index + 1); then, with ``match_low_quality``, for every
    gt whose best IoU is >= ``min_pos_iou``, EVERY prior at that best IoU gets it (a later gt
    overriding an earlier one). Padded gts never match; invalid priors take no part in a gt's
    best IoU (mmdetection leaves them out of the assignment).

    Args: as mmdetection's (``ignore_iof_thr`` -1, ``gt_max_assign_all`` True).
    """

    def __init__(self, pos_iou_thr, neg_iou_thr, min_pos_iou=0.0, match_low_quality=True,
                 ignore_iof_thr=-1, gt_max_assign_all=True):
        super().__init__()
        if ignore_iof_thr != -1 or not gt_max_assign_all:
            raise ValueError("MaxIoUAssigner: only ignore_iof_thr=-1 and gt_max_assign_all=True"
                             " (mmdetection's R-CNN settings) are implemented")
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.match_low_quality = match_low_quality

    def construct(self, overlaps, gt_valid, prior_valid):
        """``overlaps`` (N, G, P) IoUs of gts and priors, ``gt_valid`` (N, G) and
        ``prior_valid`` (N, P) bool. Returns gt indices (N, P) int32: -1 ignored, 0 negative,
        g + 1 assigned to gt g."""
        overlaps = ops.where(gt_valid[:, :, None], overlaps, ops.zeros_like(overlaps))
        max_overlaps, argmax = ops.max(overlaps, axis=1)
        gt_inds = ops.full(max_overlaps.shape, -1, dtype=ms.int32)
        gt_inds = ops.where((max_overlaps >= 0) & (max_overlaps < self.neg_iou_thr),
                            ops.zeros_like(gt_inds), gt_inds)
        gt_inds = ops.where(max_overlaps >= self.pos_iou_thr, argmax.astype(ms.int32) + 1,
                            gt_inds)
        if self.match_low_quality:
            among_valid = ops.where(prior_valid[:, None, :], overlaps,
                                    ops.full_like(overlaps, -1.0))
            gt_max = among_valid.max(axis=2, keepdims=True)
            matched = (gt_valid[:, :, None] & (gt_max >= self.min_pos_iou)
                       & (among_valid == gt_max))
            order = ops.arange(1, overlaps.shape[1] + 1, dtype=ms.int32)[None, :, None]
            last = (matched.astype(ms.int32) * order).max(axis=1)
            gt_inds = ops.where(last > 0, last, gt_inds)
        return gt_inds


def build_assigner(cfg):
    """The assigner of an mmdetection assigner config (``type`` MaxIoUAssigner)."""
    cfg = dict(cfg)
    kind = cfg.pop("type")
    if kind != "MaxIoUAssigner":
        raise ValueError(f"assigner type '{kind}' is not implemented: use MaxIoUAssigner")
    return MaxIoUAssigner(**cfg)
