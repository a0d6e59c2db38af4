"""Faster R-CNN at test time, as mmdetection runs it: backbone, FPN and RPN head as one compiled
graph; proposals, RoIAlign and post-processing on the host; the box head as a second graph."""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from .anchors import AnchorGenerator
from .fpn import FPN
from .preprocess import preprocess, to_rgb_uint8
from .roi_head import RoIHead
from .rpn import RPNHead, select_proposals

__all__ = ["FasterRCNN", "Detections"]


class Detections(dict):
    """One image's result: ``boxes`` (M, 4) x1, y1, x2, y2 in input pixels, ``scores`` (M,),
    ``labels`` (M,) COCO indices and ``names`` (M,) class names, by decreasing score."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class FasterRCNN(nn.Cell):
    """Two-stage detector. Parameter names follow mmdetection's (``backbone.``, ``neck.``,
    ``rpn_head.``, ``roi_head.bbox_head.``), with MindSpore's BN leaf names.

    Args:
        backbone: a features-only network returning the strides 4-32 stages (C2..C5).
        neck: the FPN.
        rpn_head: the RPN head.
        roi_head: the second stage.
        class_names: names of the ``num_classes`` labels.
        scale: keep-ratio resize target (long, short) of the preprocessing.
        rpn_cfg: keyword arguments of :func:`select_proposals` (mmdetection's test settings).
    """

    def __init__(self, backbone, neck=None, rpn_head=None, roi_head=None, class_names=(),
                 scale=(1333, 800), rpn_cfg=None):
        super().__init__()
        self.backbone = backbone
        self.neck = neck or FPN()
        self.rpn_head = rpn_head or RPNHead()
        self.roi_head = roi_head or RoIHead()
        self.anchor_generator = AnchorGenerator()
        self.class_names = tuple(class_names)
        self.scale = tuple(scale)
        self.rpn_cfg = dict(rpn_cfg or {})
        self.set_train(False)

    @ms.jit
    def construct(self, images):
        """The dense part: pyramid features and RPN outputs of a (N, 3, H, W) batch."""
        feats = self.neck(self.backbone(images))
        scores, deltas = self.rpn_head(feats)
        return feats, scores, deltas

    def forward_dense(self, batch):
        """Run the compiled dense part on a numpy batch; numpy outputs."""
        feats, scores, deltas = self(Tensor(batch))
        return ([f.asnumpy() for f in feats], [s.asnumpy() for s in scores],
                [d.asnumpy() for d in deltas])

    def proposals(self, scores, deltas, img_shape, index=0):
        """RPN proposals (boxes, scores) of image ``index`` of the batch."""
        sizes = [s.shape[2:] for s in scores]
        anchors = self.anchor_generator.grid_anchors(sizes)
        return select_proposals([s[index] for s in scores], [d[index] for d in deltas], anchors,
                                img_shape, **self.rpn_cfg)

    def detect(self, batch, meta):
        """Boxes, scores, labels (input pixels) of one preprocessed image (batch of one)."""
        feats, scores, deltas = self.forward_dense(batch)
        boxes, _ = self.proposals(scores, deltas, meta.img_shape)
        return self.roi_head.predict(feats, boxes, meta.img_shape, meta.scale_factor)

    def predict(self, images, score_thr=None):
        """Detections of each image (an RGB uint8 array, or a list of them).

        Each image is resized, normalised and padded on its own, as mmdetection's
        ``inference_detector``. ``score_thr`` keeps only boxes scoring above it (the detector
        itself keeps those above 0.05, at most 100 per image).
        """
        single = isinstance(images, np.ndarray) and images.ndim in (2, 3)
        results = []
        for image in ([images] if single else images):
            batch, meta = preprocess(to_rgb_uint8(image), self.scale)
            boxes, scores, labels = self.detect(batch, meta)
            if score_thr is not None:
                above = scores > score_thr
                boxes, scores, labels = boxes[above], scores[above], labels[above]
            names = np.array([self.class_names[i] for i in labels], dtype=object)
            results.append(Detections(boxes=boxes, scores=scores, labels=labels, names=names))
        return results[0] if single else results
