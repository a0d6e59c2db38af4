"""``create_detector``: a detector by name, with weights from an mmdetection checkpoint (read
directly, no torch needed) or from one of our converted ``.ckpt`` files."""
import difflib
from dataclasses import dataclass
from importlib import resources

import mindspore as ms

from ..convert.converter import param_shapes
from ..convert.mmdet_detector import convert_detector_checkpoint
from ..factory import create_model
from .faster_rcnn import FasterRCNN
from .roi_head import RoIHead

__all__ = ["DetectorConfig", "DETECTORS", "coco_classes", "convert_detector", "create_detector",
           "list_detectors"]


@dataclass(frozen=True)
class DetectorConfig:
    """A published detector: its backbone (a zoo name) and mmdetection's results and file."""

    name: str
    backbone: str
    box_ap: float
    weights: str
    url: str


DETECTORS = {cfg.name: cfg for cfg in [
    DetectorConfig(
        "faster_rcnn_r2_101_fpn", "res2net101_v1b_26w_4s", 43.0,
        "faster_rcnn_r2_101_fpn_2x_coco-175f1da6.pth",
        "https://download.openmmlab.com/mmdetection/v2.0/res2net/faster_rcnn_r2_101_fpn_2x_coco/"
        "faster_rcnn_r2_101_fpn_2x_coco-175f1da6.pth"),
]}


def list_detectors():
    return sorted(DETECTORS)


def coco_classes():
    """The 80 COCO class names in mmdetection's label order."""
    text = resources.files(__package__).joinpath("coco_classes.txt").read_text("utf-8")
    return tuple(line for line in text.splitlines() if line)


def create_detector(name, checkpoint_path=None, num_classes=80, class_names=None,
                    backbone_kwargs=None, scale=(1333, 800)):
    """Build a detector by name, with weights if ``checkpoint_path`` is given.

    Args:
        name: a name from :func:`list_detectors`.
        checkpoint_path: an mmdetection checkpoint (``.pth``) or one of our ``.ckpt`` files;
            every parameter must be found with its shape (the error says what is not).
        num_classes: object classes of the box head (COCO: 80).
        class_names: label names (default: those stored in the checkpoint, else COCO's).
        backbone_kwargs: arguments of the backbone overriding the zoo's (e.g. ``layers``).
        scale: keep-ratio resize target (long side, short side) of the preprocessing.
    """
    if name not in DETECTORS:
        close = difflib.get_close_matches(str(name), DETECTORS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else (
            f"choose from {', '.join(list_detectors())}")
        raise ValueError(f"unknown detector '{name}': {hint}")
    cfg = DETECTORS[name]
    backbone = create_model(cfg.backbone, features_only=True, out_indices=(1, 2, 3, 4),
                            stride1_pool=False, **(backbone_kwargs or {}))
    detector = FasterRCNN(backbone, roi_head=RoIHead(num_classes=num_classes), scale=scale)
    meta = {}
    if checkpoint_path:
        weights, report, meta = convert_detector_checkpoint(
            checkpoint_path, param_shapes(detector), model_name=name)
        params = {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in weights.items()}
        ms.load_param_into_net(detector, params, strict_load=True)
        detector.load_report = report
    names = class_names or meta.get("classes") or (coco_classes() if num_classes == 80 else ())
    if len(names) != num_classes:
        names = tuple(f"class{i}" for i in range(num_classes))
    detector.class_names = tuple(names)
    return detector


def convert_detector(src, out, name="faster_rcnn_r2_101_fpn", num_classes=80):
    """Convert an mmdetection detector checkpoint into one MindSpore ``.ckpt`` (strictly, as
    :func:`create_detector` loads it). Returns the conversion report."""
    detector = create_detector(name, num_classes=num_classes)
    _, report, _ = convert_detector_checkpoint(src, param_shapes(detector), out, model_name=name)
    return report
