"""Multi-stage RoI heads at test time: mmdetection's ``CascadeRoIHead`` (Cascade R-CNN,
Cascade Mask R-CNN) and ``HybridTaskCascadeRoIHead`` (HTC), as stages of the parts of
:mod:`.roi_head`."""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from .layers import run_in_chunks
from .roi_head import StandardRoIHead, bbox2roi, empty_result, sigmoid

__all__ = ["CascadeRoIHead", "HybridTaskCascadeRoIHead"]


class CascadeRoIHead(StandardRoIHead):
    """Stages of box heads, each refining the RoIs of the one before with class-agnostic
    deltas; the classes are scored by the softmax of the stages' MEAN logits and the boxes
    decoded by the last stage. With mask heads, their sigmoids are averaged over the stages,
    all computed on the final boxes.

    Args:
        bbox_roi_extractor: the RoI features of every stage (no weights: shared).
        bbox_heads: one box head per stage.
        mask_roi_extractor, mask_heads: the optional mask branch, one head per stage.
    """

    def __init__(self, bbox_roi_extractor, bbox_heads, mask_roi_extractor=None, mask_heads=None):
        super().__init__(bbox_roi_extractor, nn.CellList(bbox_heads), mask_roi_extractor,
                         nn.CellList(mask_heads) if mask_heads else None)
        self.num_stages = len(bbox_heads)

    def _bbox_forward(self, stage, feats, rois, **kwargs):
        return run_in_chunks(self.bbox_head[stage], [self._bbox_feats(feats, rois, **kwargs)],
                             self.max_rois)

    def _bbox_feats(self, feats, rois):
        return self.bbox_roi_extractor(feats, rois)

    def predict_bbox(self, feats, metas, proposals, rescale=True, **kwargs):
        if sum(len(p) for p in proposals) == 0:
            return [empty_result(meta, False) for meta in metas]
        rois = bbox2roi(proposals)
        stage_scores = []
        for stage in range(self.num_stages):
            cls_score, bbox_pred = self._bbox_forward(stage, feats, rois, **kwargs)
            stage_scores.append(cls_score)
            if stage < self.num_stages - 1:
                rois = self._refine(self.bbox_head[stage], rois, bbox_pred, metas)
        mean_score = sum(stage_scores) / np.float32(self.num_stages)
        return self._post_process(self.bbox_head[-1], rois, mean_score, bbox_pred, metas,
                                  rescale)

    @staticmethod
    def _refine(bbox_head, rois, bbox_pred, metas):
        """The RoIs moved by a stage's deltas, each clipped to its own image."""
        refined = rois.copy()
        for i, meta in enumerate(metas):
            mine = rois[:, 0] == i
            refined[mine, 1:] = bbox_head.decode(rois[mine, 1:], bbox_pred[mine],
                                                 meta.img_shape)
        return refined

    def _mask_probs(self, feats, rois, **kwargs):
        roi_feats = self._mask_feats(feats, rois, **kwargs)
        chunk = self.test_cfg["max_per_img"]
        probs = [sigmoid(run_in_chunks(head, [roi_feats], chunk)[0]) for head in self.mask_head]
        return np.mean(probs, axis=0, dtype=np.float32)

    def _mask_feats(self, feats, rois):
        return self.mask_roi_extractor(feats, rois)


class HybridTaskCascadeRoIHead(CascadeRoIHead):
    """HTC: a cascade whose box and mask RoI features are summed with RoI features of a fused
    semantic map (pooled to 7x7 for the boxes), and whose mask heads pass their features on.

    At test time the mask heads run as a chain on the final boxes (head s gets the RoI
    features plus ``conv_res`` of head s-1's features), and, as mmdetection 3.3.0 computes
    it, only the LAST head's sigmoid is used: its ``_mask_forward`` appends to the list it
    averages after the loop over the heads, not inside it.

    Args:
        semantic_roi_extractor: 14x14 RoI features of the semantic map.
        semantic_head: the :class:`~.semantic_head.FusedSemanticHead`.
        Others: as :class:`CascadeRoIHead`.
    """

    def __init__(self, bbox_roi_extractor, bbox_heads, mask_roi_extractor, mask_heads,
                 semantic_roi_extractor, semantic_head):
        super().__init__(bbox_roi_extractor, bbox_heads, mask_roi_extractor, mask_heads)
        self.semantic_roi_extractor = semantic_roi_extractor
        self.semantic_head = semantic_head

    def predict(self, feats, proposals, metas):
        levels = ms.mutable(tuple(Tensor(f) for f in feats))  # inputs, not constants
        semantic = self.semantic_head(levels).asnumpy()
        return super().predict(feats, proposals, metas, semantic_feat=semantic)

    def _bbox_feats(self, feats, rois, semantic_feat=None):
        extra = self.semantic_roi_extractor([semantic_feat], rois)
        return self.bbox_roi_extractor(feats, rois) + _average_pool_2x2(extra)

    def _mask_feats(self, feats, rois, semantic_feat=None):
        return (self.mask_roi_extractor(feats, rois)
                + self.semantic_roi_extractor([semantic_feat], rois))

    def _mask_probs(self, feats, rois, semantic_feat=None):
        roi_feats = self._mask_feats(feats, rois, semantic_feat)
        chunk, carried = self.test_cfg["max_per_img"], []
        for head in self.mask_head:
            logits, feat = run_in_chunks(head, [roi_feats] + carried, chunk)
            carried = [feat]
        return sigmoid(logits)


def _average_pool_2x2(x):
    """(K, C, 14, 14) -> (K, C, 7, 7): each 2x2 window's mean, summed in the order of
    PyTorch's ``adaptive_avg_pool2d`` (what HTC's box branch does to the semantic RoI
    features)."""
    return (x[:, :, 0::2, 0::2] + x[:, :, 0::2, 1::2] + x[:, :, 1::2, 0::2]
            + x[:, :, 1::2, 1::2]) / np.float32(4)
