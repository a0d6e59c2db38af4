"""``create_detector``: a published detector by name, built from its parts, with weights from
an mmdetection checkpoint (read directly, no torch needed), one of our converted ``.ckpt``
files, or (``pretrained=True``) mmdetection's published file, downloaded and converted once."""
import copy
import difflib
from typing import Optional, Sequence

from ..convert.converter import load_arrays, param_shapes
from ..convert.mmdet_detector import convert_detector_checkpoint
from ..factory import create_model
from ..hub import fetch_converted
from .anchors import AnchorGenerator
from .bbox_head import Shared2FCBBoxHead
from .cascade_roi_head import CascadeRoIHead, HybridTaskCascadeRoIHead
from .fpn import FPN
from .mask_head import FCNMaskHead, HTCMaskHead
from .preprocess import DetDataPreprocessor
from .registry import DETECTORS, TEST_CFG, TRAIN_CFG, DetectorConfig, coco_classes
from .roi_head import SingleRoIExtractor, StandardRoIHead
from .rpn import RPNHead
from .semantic_head import FusedSemanticHead
from .two_stage import TwoStageDetector

__all__ = ["build_detector", "convert_detector", "create_detector", "get_detector_config",
           "list_detectors", "pretrained_detector_path", "train_settings"]

# The box deltas' normalisation of each cascade stage (mmdetection's target_stds).
CASCADE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))


def list_detectors():
    return sorted(DETECTORS)


def get_detector_config(name) -> DetectorConfig:
    """The registry entry of ``name``; ValueError naming the closest names otherwise."""
    if name not in DETECTORS:
        close = difflib.get_close_matches(str(name), DETECTORS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else (
            f"choose from {', '.join(list_detectors())}")
        raise ValueError(f"unknown detector '{name}': {hint}")
    return DETECTORS[name]


def _merged(base, *changes, where="cfg"):
    """``base`` (a nested dict) with each of ``changes`` written over it; a key that ``base``
    lacks is refused (ValueError naming it and the valid keys)."""
    out = copy.deepcopy(base)
    for change in changes:
        for key, value in (change or {}).items():
            if key not in out:
                raise ValueError(f"unknown setting '{where}.{key}': valid keys are "
                                 f"{', '.join(out)}")
            nested = isinstance(value, dict) and isinstance(out[key], dict)
            out[key] = _merged(out[key], value, where=f"{where}.{key}") if nested else value
    return out


def train_settings(cfg, train_cfg=None):
    """mmdetection's ``train_cfg`` of detector ``cfg`` with the changes ``train_cfg``; a
    sampler may be named: ``"pseudo"`` (every prior, deterministic) or ``"random"``."""
    changes = copy.deepcopy(train_cfg or {})
    samplers = {}
    for stage in ("rpn", "rcnn"):
        named = changes.get(stage, {}).get("sampler") if isinstance(changes.get(stage),
                                                                        dict) else None
        if isinstance(named, str):
            if named not in ("pseudo", "random"):
                raise ValueError(f"train_cfg.{stage}.sampler '{named}': use 'pseudo', "
                                 "'random' or an mmdetection sampler dict")
            samplers[stage] = ({"type": "PseudoSampler"} if named == "pseudo"
                               else copy.deepcopy(TRAIN_CFG[stage]["sampler"]))
            del changes[stage]["sampler"]
    merged = _merged(TRAIN_CFG, cfg.train_cfg, changes, where="train_cfg")
    for stage, sampler in samplers.items():
        merged[stage]["sampler"] = sampler
    return merged


def _roi_head(cfg, num_classes, strides, roi_levels, channels, sampling_ratio=0):
    """The RoI head ``cfg`` names, on pyramid levels of ``strides`` with ``channels``; RoIs
    are pooled from the first ``roi_levels`` (the backbone's; the extra ones feed the RPN)."""
    levels = strides[:roi_levels]
    box_extractor = SingleRoIExtractor(levels, output_size=7, sampling_ratio=sampling_ratio)
    mask_extractor = SingleRoIExtractor(levels, output_size=14, sampling_ratio=sampling_ratio) \
        if cfg.with_mask else None
    if cfg.roi_head == "standard":
        return StandardRoIHead(
            box_extractor, Shared2FCBBoxHead(num_classes, in_channels=channels), mask_extractor,
            FCNMaskHead(num_classes, in_channels=channels) if cfg.with_mask else None)
    box_heads = [Shared2FCBBoxHead(num_classes, stds, reg_class_agnostic=True,
                                   in_channels=channels)
                 for stds in CASCADE_STDS[:cfg.num_stages]]
    if cfg.roi_head == "cascade":
        mask_heads = [FCNMaskHead(num_classes, in_channels=channels)
                      for _ in range(cfg.num_stages)] if cfg.with_mask else None
        return CascadeRoIHead(box_extractor, box_heads, mask_extractor, mask_heads)
    semantic = FusedSemanticHead(num_ins=len(strides), in_channels=channels)
    return HybridTaskCascadeRoIHead(
        box_extractor, box_heads, mask_extractor,
        [HTCMaskHead(with_conv_res=stage > 0, num_classes=num_classes, in_channels=channels)
         for stage in range(cfg.num_stages)],
        SingleRoIExtractor([strides[semantic.fusion_level]], output_size=14), semantic)


def build_detector(cfg, num_classes=80, backbone_kwargs=None, scale=(1333, 800),
                   test_cfg=None, class_names=(), train_cfg=None, roi_sampling_ratio=None,
                   backbone_checkpoint=None):
    """The detector ``cfg`` describes, with random weights but for the backbone's from
    ``backbone_checkpoint`` (a classifier's weights, any file ``create_model`` reads: as
    mmdetection's backbone ``init_cfg`` Pretrained). The backbone trains as mmdetection's:
    stem and stage 1 frozen, every BN in inference mode."""
    backbone_kwargs = {"frozen_stages": 1, "norm_eval": True, **(backbone_kwargs or {})}
    backbone = create_model(cfg.backbone, features_only=True, out_indices=(1, 2, 3, 4),
                            stride1_pool=False, checkpoint_path=backbone_checkpoint,
                            **backbone_kwargs)
    stages = [info for info in backbone.feature_info if info["index"] in backbone.out_indices]
    neck = FPN([info["num_chs"] for info in stages])
    strides = [info["reduction"] for info in stages]
    strides += [strides[-1] * 2 ** (k + 1) for k in range(neck.num_outs - len(strides))]
    rpn_head = RPNHead(AnchorGenerator(strides=strides), in_channels=neck.out_channels)
    roi_head = _roi_head(cfg, num_classes, strides, len(stages), neck.out_channels,
                         roi_sampling_ratio or 0)
    return TwoStageDetector(backbone, neck, rpn_head, roi_head,
                            _merged(TEST_CFG, cfg.test_cfg, test_cfg, where="test_cfg"),
                            DetDataPreprocessor(scale=tuple(scale)), class_names,
                            train_cfg=train_settings(cfg, train_cfg),
                            train_sampling_ratio=roi_sampling_ratio or 2)


def pretrained_detector_path(name, cache_dir=None, backbone_kwargs=None):
    """The cached ``.ckpt`` of ``name``'s published checkpoint, downloaded (sha256 prefix
    checked), converted and cached on first use, as for backbones (:mod:`res2net_ms.hub`)."""
    cfg = get_detector_config(name)

    def convert(source, target):
        return convert_detector(source, target, name, backbone_kwargs=backbone_kwargs)

    return fetch_converted(cfg.weights, cfg.url, convert, cache_dir)


def create_detector(name: str, checkpoint_path: Optional[str] = None, pretrained: bool = False,
                    num_classes: int = 80, class_names: Optional[Sequence[str]] = None,
                    backbone_kwargs: Optional[dict] = None, scale: Sequence[int] = (1333, 800),
                    test_cfg: Optional[dict] = None, train_cfg: Optional[dict] = None,
                    roi_sampling_ratio: Optional[int] = None,
                    cache_dir: Optional[str] = None, new_classes: bool = False,
                    backbone_checkpoint: Optional[str] = None) -> TwoStageDetector:
    """Build a detector by name, with weights if ``checkpoint_path`` or ``pretrained`` is given.

    Args:
        name: a name from :func:`list_detectors`.
        checkpoint_path: an mmdetection checkpoint (``.pth``) or one of our ``.ckpt`` files;
            every parameter must be found with its shape (the error says what is not).
        pretrained: mmdetection's published COCO weights (unless ``checkpoint_path``).
        num_classes: object classes of the heads (COCO: 80).
        class_names: label names (default: those stored in the checkpoint, else COCO's).
        backbone_kwargs: arguments of the backbone overriding the zoo's (e.g. ``layers``).
        scale: keep-ratio resize target (long side, short side) of the preprocessing.
        test_cfg: changes to mmdetection's test settings, in its shape
            (``{"rcnn": {"score_thr": 0.3}}``).
        train_cfg: changes to mmdetection's training settings (:data:`~.registry.TRAIN_CFG`),
            in its shape; ``{"rpn": {"sampler": "pseudo"}, "rcnn": {"sampler": "pseudo"}}``
            makes :meth:`~.two_stage.TwoStageDetector.loss` deterministic.
        roi_sampling_ratio: RoIAlign samples per bin and axis (mmdetection's
            ``roi_layer.sampling_ratio``). None: mmdetection's adaptive sampling at inference
            and 2 in training (the device RoIAlign takes a fixed count, as MindSpore's own
            Mask R-CNN); a number sets both.
        cache_dir: the cache folder of ``pretrained`` (default ``$R2N_CACHE_DIR`` or
            ``~/.cache/res2net_ms``).
        new_classes: fine-tuning onto ``num_classes`` other classes: the checkpoint's class
            layers, of another size, are left out (mmdetection's ``load_from``).
        backbone_checkpoint: the backbone's weights (a classifier's file) for a detector
            without ``checkpoint_path``: mmdetection's backbone ``init_cfg`` Pretrained.
    """
    cfg = get_detector_config(name)
    if pretrained and not checkpoint_path:
        checkpoint_path = pretrained_detector_path(name, cache_dir, backbone_kwargs)
    detector = build_detector(cfg, num_classes, backbone_kwargs, scale, test_cfg,
                              train_cfg=train_cfg, roi_sampling_ratio=roi_sampling_ratio,
                              backbone_checkpoint=None if checkpoint_path else backbone_checkpoint)
    meta = {}
    if checkpoint_path:
        weights, report, meta = convert_detector_checkpoint(
            checkpoint_path, param_shapes(detector), model_name=name, new_classes=new_classes)
        load_arrays(detector, weights)
        detector.load_report = report
    names = class_names or meta.get("classes") or (coco_classes() if num_classes == 80 else ())
    if len(names) != num_classes:
        names = tuple(f"class{i}" for i in range(num_classes))
    detector.class_names = tuple(names)
    return detector


def convert_detector(src, out, name="faster_rcnn_r2_101_fpn", num_classes=80,
                     backbone_kwargs=None):
    """Convert an mmdetection detector checkpoint into one MindSpore ``.ckpt`` (strictly, as
    :func:`create_detector` loads it). Returns the conversion report."""
    detector = build_detector(get_detector_config(name), num_classes, backbone_kwargs)
    _, report, _ = convert_detector_checkpoint(src, param_shapes(detector), out, model_name=name)
    return report
