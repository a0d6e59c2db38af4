"""The second stage at test time: RoI features from the pyramid and mmdetection's
``StandardRoIHead`` (a box branch and an optional mask branch).

RoIAlign and the post-processing run on the host in numpy; each head runs as a compiled graph
on a fixed number of RoIs (:func:`~.layers.run_in_chunks`).
"""
import numpy as np
from mindspore import nn

from .layers import run_in_chunks
from .mask_head import predict_masks
from .roi_align import roi_align

__all__ = ["map_roi_levels", "bbox2roi", "SingleRoIExtractor", "StandardRoIHead",
           "empty_result", "sigmoid"]


def map_roi_levels(rois, num_levels=4, finest_scale=56):
    """Pyramid level of each RoI: floor(log2(sqrt(w * h) / finest_scale + 1e-6)), clamped."""
    scale = np.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = np.floor(np.log2(scale / np.float32(finest_scale) + np.float32(1e-6)))
    return np.clip(levels, 0, num_levels - 1).astype(np.int64)


def bbox2roi(boxes_per_image):
    """RoIs (K, 5): the image's index in the batch, then x1, y1, x2, y2."""
    return np.concatenate([np.concatenate([np.full((len(b), 1), i, np.float32),
                                           np.asarray(b, np.float32).reshape(-1, 4)], axis=1)
                           for i, b in enumerate(boxes_per_image)])


def sigmoid(x):
    return np.float32(1) / (np.float32(1) + np.exp(-x))


def empty_result(meta, with_mask):
    result = dict(boxes=np.zeros((0, 4), np.float32), scores=np.zeros((0,), np.float32),
                  labels=np.zeros((0,), np.int64))
    if with_mask:
        result["masks"] = np.zeros((0,) + tuple(meta.ori_shape), bool)
    return result


class SingleRoIExtractor:
    """RoIAlign features (K, C, S, S) of each RoI on its own pyramid level.

    Args:
        featmap_strides: strides of the levels used (P2..P5 for the heads, P3 for HTC's
            semantic features).
        output_size: bins per side (7 for boxes, 14 for masks).
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
        """``feats``: numpy levels (N, C, H, W), finest first; ``rois`` (K, 5)."""
        channels = feats[0].shape[1]
        out = np.zeros((len(rois), channels, self.output_size, self.output_size), np.float32)
        levels = map_roi_levels(rois, len(self.featmap_strides), self.finest_scale)
        for level, stride in enumerate(self.featmap_strides):
            members = np.nonzero(levels == level)[0]
            if members.size:
                out[members] = roi_align(feats[level], rois[members], self.output_size,
                                         1.0 / stride, self.sampling_ratio, self.aligned)
        return out


class StandardRoIHead(nn.Cell):
    """Detections of a batch from its proposals, as mmdetection's ``StandardRoIHead``.

    With a mask head, the box NMS works in network-input pixels and the boxes are divided by
    the scale factor afterwards, with the masks (mmdetection's order); without, the boxes are
    divided before the NMS.

    The compiled box heads take ``max_rois`` RoIs per call (the RPN's proposals per image)
    and the mask heads ``test_cfg["max_per_img"]``: both are set by the detector from its
    ``test_cfg``.

    Args:
        bbox_roi_extractor, bbox_head: the box branch.
        mask_roi_extractor, mask_head: the optional mask branch.
    """

    def __init__(self, bbox_roi_extractor, bbox_head, mask_roi_extractor=None, mask_head=None):
        super().__init__()
        self.bbox_roi_extractor = bbox_roi_extractor
        self.bbox_head = bbox_head
        self.mask_roi_extractor = mask_roi_extractor
        self.mask_head = mask_head
        self.max_rois = None  # the RPN's test_cfg.max_per_img, set by the detector
        self.test_cfg = None  # mmdetection's test_cfg.rcnn, set by the detector

    @property
    def with_mask(self):
        return self.mask_head is not None

    def predict(self, feats, proposals, metas, **kwargs):
        """One result dict per image (``boxes`` in input-image pixels, ``scores``,
        ``labels`` and, with masks, ``masks``) from numpy pyramid ``feats`` (N, C, H, W),
        the proposals (K_i, 4) of each image and their :class:`~.preprocess.ImageMeta`."""
        results = self.predict_bbox(feats, metas, proposals, rescale=not self.with_mask,
                                    **kwargs)
        if self.with_mask:
            results = self.predict_mask(feats, metas, results, **kwargs)
        return results

    def _bbox_forward(self, feats, rois):
        """Class logits and deltas of the RoIs."""
        return run_in_chunks(self.bbox_head, [self.bbox_roi_extractor(feats, rois)],
                             self.max_rois)

    def predict_bbox(self, feats, metas, proposals, rescale=True):
        if sum(len(p) for p in proposals) == 0:
            return [empty_result(meta, False) for meta in metas]
        rois = bbox2roi(proposals)
        cls_score, bbox_pred = self._bbox_forward(feats, rois)
        return self._post_process(self.bbox_head, rois, cls_score, bbox_pred, metas, rescale)

    def _post_process(self, bbox_head, rois, cls_score, bbox_pred, metas, rescale):
        results = []
        for i, meta in enumerate(metas):
            mine = rois[:, 0] == i
            if not mine.any():
                results.append(empty_result(meta, False))
                continue
            boxes, scores, labels = bbox_head.predict_by_feat(
                rois[mine, 1:], cls_score[mine], bbox_pred[mine], meta, self.test_cfg,
                rescale)
            results.append(dict(boxes=boxes, scores=scores, labels=labels))
        return results

    def _mask_probs(self, feats, rois):
        """Mask probabilities (K, C, 28, 28) of the RoIs."""
        logits, = run_in_chunks(self.mask_head, [self.mask_roi_extractor(feats, rois)],
                                self.test_cfg["max_per_img"])
        return sigmoid(logits)

    def predict_mask(self, feats, metas, results, **kwargs):
        """Adds ``masks`` to each image's result and divides its boxes by the scale factor."""
        if sum(len(r["boxes"]) for r in results) == 0:
            return [empty_result(meta, True) for meta in metas]
        rois = bbox2roi([r["boxes"] for r in results])
        probs = self._mask_probs(feats, rois, **kwargs)
        for i, (meta, result) in enumerate(zip(metas, results)):
            mine = rois[:, 0] == i
            result["boxes"], result["masks"] = predict_masks(
                probs[mine], result["boxes"], result["labels"], meta, self.test_cfg)
        return results
