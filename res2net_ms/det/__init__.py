"""Res2Net detectors: mmdetection's five R2-101-FPN detectors (Faster R-CNN, Mask R-CNN,
Cascade R-CNN, Cascade Mask R-CNN, HTC) reproduced in MindSpore.

Parts, each with mmdetection's test-time settings: preprocessing (:mod:`.preprocess`), FPN
(:mod:`.fpn`), anchors (:mod:`.anchors`), box coder (:mod:`.box_coder`), RPN (:mod:`.rpn`),
RoIAlign (:mod:`.roi_align`), NMS (:mod:`.nms`), box, mask and semantic heads
(:mod:`.bbox_head`, :mod:`.mask_head`, :mod:`.semantic_head`), RoI heads (:mod:`.roi_head`,
:mod:`.cascade_roi_head`) and the detector (:mod:`.two_stage`); :mod:`.registry` says what
each published detector is made of and :func:`create_detector` builds it.

Training (Faster and Mask R-CNN) is one compiled graph (:mod:`.train_step`) of device parts:
the padded batch (:mod:`.train_inputs`), box maths (:mod:`.bbox_ops`), ``MaxIoUAssigner``
(:mod:`.assigner`), samplers (:mod:`.sampler`), RPN losses (:mod:`.rpn_loss`), proposals
(:mod:`.proposals`), RoI features (:mod:`.roi_extractor`), mask targets (:mod:`.mask_target`)
and the R-CNN losses (:mod:`.roi_loss`, :mod:`.losses`); ``TwoStageDetector.loss`` runs it.
"""
from ..lazy import lazy_names

# Imported on first use: the factory brings the converter and the hub, which a network part
# (``res2net_ms.det.fpn``) or the registry does not need.
_NAMES = {"convert_detector": ".factory", "create_detector": ".factory",
          "get_detector_config": ".factory", "list_detectors": ".factory",
          "DETECTORS": ".registry", "DetectorConfig": ".registry", "coco_classes": ".registry",
          "Detections": ".two_stage", "TwoStageDetector": ".two_stage"}
__all__ = sorted(_NAMES)
__getattr__ = lazy_names(__name__, _NAMES)
