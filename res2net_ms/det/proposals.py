"""RPN proposals on the device, for training (mmdetection's ``RPNHead.predict_by_feat`` with
``train_cfg.rpn_proposal``), in static shapes: per level the ``nms_pre`` best anchors
(``TopK``, sorted), decoded and clipped to the image, ``NMSWithMask`` within the level, then
the ``max_per_img`` best of all levels, padded, with a validity mask.

``NMSWithMask`` is greedy in input order on CPU and ignores scores on Ascend, hence the sorted
``TopK`` before it (and at most 2864 boxes per call on Ascend: ``nms_pre`` is 2000). Running it
per level equals mmdetection's one ``batched_nms`` over the levels (coordinate offsets keep
levels apart there).
"""
import mindspore as ms
from mindspore import nn, ops

from .bbox_ops import delta2bbox

__all__ = ["RPNProposals"]


class RPNProposals(nn.Cell):
    """Proposals (N, K, 4) and their validity (N, K) from the RPN's outputs; no gradient.

    Args:
        nms_pre: best anchors per level before NMS (all when <= 0).
        max_per_img: proposals kept per image (K, unless fewer boxes exist).
        nms: ``{"iou_threshold": ...}``.
        min_bbox_size: boxes not wider and taller than this are dropped.
        stds: the RPN's box coder's ``stds``.
    """

    def __init__(self, nms_pre, max_per_img, nms, min_bbox_size, stds):
        super().__init__()
        self.nms_pre = nms_pre
        self.max_per_img = max_per_img
        self.min_bbox_size = min_bbox_size
        self.nms = ops.NMSWithMask(nms["iou_threshold"])
        self.stds = stds

    def num_candidates(self, level_sizes):
        """Boxes that reach the last ``TopK`` for levels of ``level_sizes`` anchors."""
        return sum(min(self.nms_pre, size) if self.nms_pre > 0 else size
                   for size in level_sizes)

    def _nms_keep(self, boxes, scores):
        """Per image, which of the score-sorted ``boxes`` (N, k, 4) survive NMS (N, k)."""
        keep = ()
        for i in range(boxes.shape[0]):
            _, index, mask = self.nms(ops.concat([boxes[i], scores[i][:, None]], axis=1))
            keep += (ops.tensor_scatter_elements(ops.zeros_like(scores[i]), index,
                                                 mask.astype(ms.float32), axis=0) > 0,)
        return ops.stack(keep)

    def construct(self, scores, deltas, anchors, img_shapes):
        """``scores`` (N, A_l) sigmoid objectness and ``deltas`` (N, A_l, 4) per level,
        ``anchors`` (A_l, 4) per level, ``img_shapes`` (N, 2) heights and widths."""
        level_boxes, level_scores = (), ()
        for score, delta, anchor in zip(scores, deltas, anchors):
            k = min(self.nms_pre, score.shape[1]) if self.nms_pre > 0 else score.shape[1]
            top, index = ops.topk(ops.stop_gradient(score), k)
            delta = ops.gather_elements(ops.stop_gradient(delta), 1,
                                        ops.tile(index[:, :, None], (1, 1, 4)))
            boxes = delta2bbox(anchor[index], delta, img_shapes, self.stds)
            wide = ((boxes[..., 2] - boxes[..., 0] > self.min_bbox_size)
                    & (boxes[..., 3] - boxes[..., 1] > self.min_bbox_size))
            # boxes to drop go to NMS without area, so that they suppress nothing
            flat = ops.where(wide[..., None], boxes, ops.zeros_like(boxes))
            keep = self._nms_keep(flat, top) & wide
            level_boxes += (boxes,)
            level_scores += (ops.where(keep, top, ops.full_like(top, -1.0)),)
        boxes, scores = ops.concat(level_boxes, axis=1), ops.concat(level_scores, axis=1)
        best, index = ops.topk(scores, min(self.max_per_img, scores.shape[1]))
        boxes = ops.gather_elements(boxes, 1, ops.tile(index[:, :, None], (1, 1, 4)))
        return boxes, best >= 0
