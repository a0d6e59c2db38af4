"""mmdetection's ``TwoStageDetector``, built from injected parts. At test time backbone, neck
and RPN head run as one compiled graph on a batch; proposals and the RoI head follow on the
host (its heads as compiled graphs of their own). Its training losses are one compiled graph
(:class:`~.train_step.TwoStageLoss`)."""
from dataclasses import dataclass, fields
from typing import Iterator, Optional, Sequence

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from .layers import float32
from .preprocess import DetDataPreprocessor, image_size, load_image
from .train_step import TwoStageLoss, check_overflow

__all__ = ["Detections", "TwoStageDetector"]


@dataclass
class Detections:
    """One image's detections, by decreasing score; fields also read as ``d["boxes"]``."""

    boxes: np.ndarray    # (M, 4) float32 x1, y1, x2, y2 in input-image pixels
    scores: np.ndarray   # (M,) float32
    labels: np.ndarray   # (M,) int64 class indices
    names: np.ndarray    # (M,) class names
    masks: Optional[np.ndarray] = None  # (M, H, W) bool at the input image's size (mask models)

    def __getitem__(self, name):
        return getattr(self, name)

    def __contains__(self, name):
        return getattr(self, name, None) is not None

    def keys(self):
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


class TwoStageDetector(nn.Cell):
    """Backbone, neck, RPN head and RoI head, with mmdetection's parameter names
    (``backbone.``, ``neck.``, ``rpn_head.``, ``roi_head.``; MindSpore's BN leaf names).

    Args:
        backbone: a features-only network returning the stride 4-32 stages (C2..C5).
        neck: the FPN.
        rpn_head: the RPN head (it owns the anchor generator).
        roi_head: the second stage.
        test_cfg: mmdetection's ``test_cfg`` (``rpn`` and ``rcnn``); the RoI head reads its
            ``rcnn`` part.
        data_preprocessor: resize, normalisation and padding of the input images.
        class_names: names of the labels.
        train_cfg: mmdetection's ``train_cfg`` (``rpn``, ``rpn_proposal``, ``rcnn``) and the
            fixed counts of the training graph (``static``), for :meth:`loss`.
        train_sampling_ratio: RoIAlign samples per bin and axis in training.
    """

    def __init__(self, backbone, neck, rpn_head, roi_head, test_cfg, data_preprocessor=None,
                 class_names=(), train_cfg=None, train_sampling_ratio=2):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.roi_head = roi_head
        self.test_cfg = test_cfg
        self.roi_head.test_cfg = test_cfg["rcnn"]
        self.roi_head.max_rois = test_cfg["rpn"]["max_per_img"]
        self.data_preprocessor = data_preprocessor or DetDataPreprocessor()
        self.class_names = tuple(class_names)
        self.train_cfg = train_cfg
        self.train_sampling_ratio = train_sampling_ratio
        self._training_graphs = {}  # a dict: a Cell attribute would rename our parameters
        self.set_train(False)

    @property
    def with_mask(self) -> bool:
        return self.roi_head.with_mask

    @ms.jit
    def construct(self, images):
        """The dense part: pyramid features and RPN outputs of a (N, 3, H, W) batch."""
        feats = float32(self.neck(self.backbone(images)))
        scores, deltas = self.rpn_head(feats)
        return feats, scores, deltas

    def forward_dense(self, batch):
        """Run the compiled dense part on a numpy batch; numpy outputs."""
        feats, scores, deltas = self(Tensor(batch))
        return ([f.asnumpy() for f in feats], [s.asnumpy() for s in scores],
                [d.asnumpy() for d in deltas])

    def proposals(self, scores, deltas, img_shape, index=0):
        """RPN proposals (boxes, scores) of image ``index`` of the batch."""
        return self.rpn_head.predict([s[index] for s in scores], [d[index] for d in deltas],
                                     img_shape, self.test_cfg["rpn"])

    def predict_batch(self, batch, metas):
        """Raw results (dicts of input-pixel boxes, scores, labels, masks) of the images of a
        preprocessed batch (blank images after ``len(metas)`` are ignored)."""
        feats, scores, deltas = self.forward_dense(batch)
        proposals = [self.proposals(scores, deltas, meta.img_shape, i)[0]
                     for i, meta in enumerate(metas)]
        return self.roi_head.predict(feats, proposals, metas)

    def predict_iter(self, images: Sequence, batch_size: int = 1,
                     score_thr: Optional[float] = None) -> Iterator:
        """``(index, Detections)`` for each image, a batch at a time: images are grouped by
        their padded size (see :class:`DetDataPreprocessor`) and read when their batch runs."""
        sizes = [image_size(image) for image in images]
        for indices in self.data_preprocessor.plan(sizes, batch_size):
            loaded = [load_image(images[i]) for i in indices]
            batch, metas = self.data_preprocessor.collate(loaded, batch_size)
            for index, raw in zip(indices, self.predict_batch(batch, metas)):
                yield index, self._detections(raw, score_thr)

    def predict(self, images, batch_size: int = 1, score_thr: Optional[float] = None):
        """Detections of an image (an RGB uint8 array, a PIL image or a path) or of a list of
        them, ``batch_size`` images per compiled call. ``score_thr`` keeps only boxes scoring
        above it (the detector itself keeps those above ``test_cfg["rcnn"]["score_thr"]``, at
        most ``max_per_img`` per image)."""
        single = not isinstance(images, (list, tuple)) and not (
            isinstance(images, np.ndarray) and images.ndim == 4)
        items = [images] if single else list(images)
        results = [None] * len(items)
        for index, result in self.predict_iter(items, batch_size, score_thr):
            results[index] = result
        return results[0] if single else results

    def loss_cell(self):
        """The compiled training graph of this detector (:class:`~.train_step.TwoStageLoss`),
        built once."""
        if "loss" not in self._training_graphs:
            self._training_graphs["loss"] = TwoStageLoss(self, self.train_cfg,
                                                         self.train_sampling_ratio)
        return self._training_graphs["loss"]

    def loss(self, images: Sequence, targets: Sequence[dict]) -> dict:
        """mmdetection's training losses of RGB uint8 ``images`` and their ``targets``
        (dicts of ``boxes`` (K, 4) x1, y1, x2, y2 in input pixels, ``labels`` (K,) and, for
        mask models, ``masks`` (K, H, W) bool), as floats under mmdetection's names
        (``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``acc``, ``loss_bbox``,
        ``loss_mask``), computed by the compiled training graph in training mode."""
        cell = self.loss_cell()
        inputs = cell.inputs(images, targets)
        was_training = self.training
        cell.set_train(True)
        try:
            _, losses, overflow = cell(*inputs)
        finally:
            self.set_train(was_training)
        check_overflow(overflow, cell)
        return {name: float(value.asnumpy()) for name, value in zip(cell.names, losses)}

    def _detections(self, raw, score_thr):
        keep = slice(None) if score_thr is None else raw["scores"] > score_thr
        names = np.array([self.class_names[i] for i in raw["labels"][keep]], dtype=object)
        return Detections(raw["boxes"][keep], raw["scores"][keep], raw["labels"][keep], names,
                          raw["masks"][keep] if "masks" in raw else None)
