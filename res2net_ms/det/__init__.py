"""Res2Net detectors: mmdetection's Faster R-CNN R2-101-FPN, reproduced in MindSpore.

Small parts, each with mmdetection's test-time settings as defaults: preprocessing
(:mod:`.preprocess`), FPN (:mod:`.fpn`), anchors (:mod:`.anchors`), box coder
(:mod:`.box_coder`), RPN (:mod:`.rpn`), RoIAlign (:mod:`.roi_align`), NMS (:mod:`.nms`), the
RoI head (:mod:`.roi_head`) and the detector (:mod:`.faster_rcnn`), built by
:func:`create_detector`.
"""
from .faster_rcnn import Detections, FasterRCNN
from .factory import DETECTORS, coco_classes, convert_detector, create_detector, list_detectors

__all__ = ["DETECTORS", "Detections", "FasterRCNN", "coco_classes", "convert_detector",
           "create_detector", "list_detectors"]
