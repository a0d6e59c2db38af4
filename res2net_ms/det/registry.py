"""The published Res2Net detectors of mmdetection (data only): what each builds and where its
weights are, as :mod:`res2net_ms.models.registry` does for networks."""
from dataclasses import dataclass, field
from importlib import resources
from typing import Optional

__all__ = ["DetectorConfig", "DETECTORS", "TEST_CFG", "TRAIN_CFG", "WEIGHTS_BASE_URL",
           "coco_classes"]

WEIGHTS_BASE_URL = "https://download.openmmlab.com/mmdetection/v2.0/res2net"

# mmdetection's test settings of the R50-FPN base configs, in its own shape.
TEST_CFG = {
    "rpn": {"nms_pre": 1000, "max_per_img": 1000, "nms": {"iou_threshold": 0.7},
            "min_bbox_size": 0},
    "rcnn": {"score_thr": 0.05, "nms": {"iou_threshold": 0.5}, "max_per_img": 100,
             "mask_thr_binary": 0.5},
}

# mmdetection's training settings of the Faster R-CNN R50-FPN base config, in its own shape
# (Mask R-CNN changes them: DetectorConfig.train_cfg; mask_size is the mask head's). "static"
# is ours: the fixed counts of the compiled step (gt rows per image; mask head slots per
# image, None: every positive the random sampler may draw, num * pos_fraction).
TRAIN_CFG = {
    "rpn": {
        "assigner": {"type": "MaxIoUAssigner", "pos_iou_thr": 0.7, "neg_iou_thr": 0.3,
                     "min_pos_iou": 0.3, "match_low_quality": True, "ignore_iof_thr": -1},
        "sampler": {"type": "RandomSampler", "num": 256, "pos_fraction": 0.5,
                    "neg_pos_ub": -1, "add_gt_as_proposals": False},
        "allowed_border": -1, "pos_weight": -1},
    "rpn_proposal": {"nms_pre": 2000, "max_per_img": 1000, "nms": {"iou_threshold": 0.7},
                     "min_bbox_size": 0},
    "rcnn": {
        "assigner": {"type": "MaxIoUAssigner", "pos_iou_thr": 0.5, "neg_iou_thr": 0.5,
                     "min_pos_iou": 0.5, "match_low_quality": False, "ignore_iof_thr": -1},
        "sampler": {"type": "RandomSampler", "num": 512, "pos_fraction": 0.25,
                    "neg_pos_ub": -1, "add_gt_as_proposals": True},
        "pos_weight": -1, "mask_size": 28},
    "static": {"max_gts": 100, "mask_rois": None},
}
MASK_RCNN_TRAIN_CFG = {"rcnn": {"assigner": {"match_low_quality": True}}}


@dataclass(frozen=True)
class DetectorConfig:
    """A published detector.

    Attributes:
        name: our name (``list_detectors()``).
        roi_head: ``standard`` (Faster, Mask R-CNN), ``cascade`` or ``htc``.
        with_mask: whether it has mask heads.
        box_ap, mask_ap: mmdetection's COCO val2017 results.
        weights: the published checkpoint's file name (``<config>-<sha256 prefix>.pth``).
        mmdet_config: mmdetection 3.x's config of it (``configs/res2net/``).
        backbone: the zoo network of its backbone.
        num_stages: cascade stages.
        test_cfg: changes to :data:`TEST_CFG` (``{"rcnn": {"score_thr": ...}}``).
        train_cfg: changes to :data:`TRAIN_CFG`.
    """

    name: str
    roi_head: str
    with_mask: bool
    box_ap: float
    mask_ap: Optional[float]
    weights: str
    mmdet_config: str
    backbone: str = "res2net101_v1b_26w_4s"
    num_stages: int = 1
    test_cfg: dict = field(default_factory=dict)
    train_cfg: dict = field(default_factory=dict)

    @property
    def url(self):
        """mmdetection's download address: ``<base>/<config name>/<file>``."""
        return f"{WEIGHTS_BASE_URL}/{self.weights.rsplit('-', 1)[0]}/{self.weights}"


DETECTORS = {cfg.name: cfg for cfg in [
    DetectorConfig("faster_rcnn_r2_101_fpn", "standard", False, 43.0, None,
                   "faster_rcnn_r2_101_fpn_2x_coco-175f1da6.pth",
                   "faster-rcnn_res2net-101_fpn_2x_coco"),
    DetectorConfig("mask_rcnn_r2_101_fpn", "standard", True, 43.6, 38.7,
                   "mask_rcnn_r2_101_fpn_2x_coco-17f061e8.pth",
                   "mask-rcnn_res2net-101_fpn_2x_coco", train_cfg=MASK_RCNN_TRAIN_CFG),
    DetectorConfig("cascade_rcnn_r2_101_fpn", "cascade", False, 45.7, None,
                   "cascade_rcnn_r2_101_fpn_20e_coco-f4b7b7db.pth",
                   "cascade-rcnn_res2net-101_fpn_20e_coco", num_stages=3),
    DetectorConfig("cascade_mask_rcnn_r2_101_fpn", "cascade", True, 46.4, 40.0,
                   "cascade_mask_rcnn_r2_101_fpn_20e_coco-8a7b41e1.pth",
                   "cascade-mask-rcnn_res2net-101_fpn_20e_coco", num_stages=3),
    DetectorConfig("htc_r2_101_fpn", "htc", True, 47.5, 41.6,
                   "htc_r2_101_fpn_20e_coco-3a8d2112.pth",
                   "htc_res2net-101_fpn_20e_coco", num_stages=3,
                   test_cfg={"rcnn": {"score_thr": 0.001}}),
]}


def coco_classes():
    """The 80 COCO class names in mmdetection's label order."""
    text = resources.files(__package__).joinpath("coco_classes.txt").read_text("utf-8")
    return tuple(line for line in text.splitlines() if line)
