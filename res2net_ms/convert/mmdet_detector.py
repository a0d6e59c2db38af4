"""Whole mmdetection detector checkpoints (backbone, FPN, RPN and the RoI heads of Faster, Mask,
Cascade, Cascade Mask R-CNN and HTC) -> our names, as strictly as backbones.

The detector (``res2net_ms.det``, a layer above) passes the shapes of its parameters in; this
module only renames and checks. Our detector names its parameters as mmdetection does,
except the ``.conv`` wrappers of the FPN's ``ConvModule`` and MindSpore's BN leaf names.
mmdetection 2.x/3.x classifiers put the background class last, as ours: their rows are kept in
order; mmdetection 1.x files (background first, "+1" box coder) are refused.
"""
import json
import re

from ..ckpt import save_ckpt
from .converter import SOURCE_KEY, ConversionReport, check_strict, read_state
from .errors import CheckpointFormatError, CheckpointMismatchError
from .layouts import detect_layout, official_to_ours, to_official

__all__ = ["CLASSES_KEY", "read_detector_checkpoint", "map_detector",
           "convert_detector_checkpoint"]

# String entry of converted detector .ckpt files: the class names (JSON list), when known.
CLASSES_KEY = "classes"
_NECK_CONV = re.compile(r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.")


def read_detector_checkpoint(path):
    """``(state, meta)`` of an mmdetection detector file or of one of our detector .ckpt.

    ``meta`` holds what the file says besides tensors: ``classes`` (names, when stored) and
    ``mmdet_version``.
    """
    state = read_state(path)
    if not state:
        raise CheckpointFormatError(f"{path}: holds no state dict of tensors")
    if isinstance(state.marks.get(CLASSES_KEY), str):
        return state, {"classes": tuple(json.loads(state.marks[CLASSES_KEY]))}
    return state, _meta(state.meta)


def _meta(raw):
    """Class names and version from mmdetection 2.x (``CLASSES``) or 3.x (``dataset_meta``)."""
    meta = {}
    classes = raw.get("CLASSES")
    if classes is None and isinstance(raw.get("dataset_meta"), dict):
        classes = raw["dataset_meta"].get("classes")
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        meta["classes"] = tuple(classes)
    if isinstance(raw.get("mmdet_version"), str):
        meta["mmdet_version"] = raw["mmdet_version"]
    return meta


def _to_ours(state, dropped):
    """mmdetection names -> ours (our own names pass through; a training checkpoint with
    EMA gives its averaged weights, as classification checkpoints do and as mmengine's
    ``EMAHook`` saves them)."""
    if detect_layout(state) == "res2net_ms":
        ours = {}
        if any(key.startswith("ema.") for key in state):
            state = {**state, **{k[len("ema."):]: v for k, v in state.items()
                                 if k.startswith("ema.")}}
        for key, value in state.items():
            if key.startswith(("backbone.", "neck.", "rpn_head.", "roi_head.")):
                ours[key] = value
            else:
                dropped.setdefault("training state", []).append(key)
        return ours
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
    ours = {"backbone." + k: v
            for k, v in official_to_ours(to_official(backbone, "mmdet", dropped)).items()}
    for key, value in state.items():
        if key.startswith("backbone."):
            continue
        if key.endswith(".num_batches_tracked"):
            dropped.setdefault("num_batches_tracked", []).append(key)
            continue
        ours[_NECK_CONV.sub(r"neck.\1.\2.", key)] = value
    return ours


def map_detector(state, targets, meta=None, source_name="<memory>", model_name="?"):
    """Rename a detector ``state`` to the names of ``targets`` ({name: shape}, the detector's
    parameters) and check every shape. Returns ``(weights, report)``; see :func:`check_strict`.
    """
    meta = meta or {}
    version = meta.get("mmdet_version", "")
    if version.startswith(("0.", "1.")):
        raise CheckpointMismatchError(
            f"{source_name}: an mmdetection {version} checkpoint (background class first, "
            "'+1' box coder); upgrade it with mmdetection's "
            "tools/model_converters/upgrade_model_version.py first")
    layout = "res2net_ms" if detect_layout(state) == "res2net_ms" else "mmdet"
    report = ConversionReport(source_name, layout, model_name)
    weights = {}
    for name, value in _to_ours(state, report.dropped).items():
        if name not in targets:
            report.dropped.setdefault("unexpected", []).append(name)
        elif tuple(value.shape) != tuple(targets[name]):
            report.mismatched.append((name, tuple(value.shape), tuple(targets[name])))
        else:
            weights[name] = value
    report.missing = [n for n in targets if n not in weights]
    report.mismatched += [(n, "unexpected", None) for n in report.dropped.get("unexpected", [])]
    report.mapped = len(weights)
    _check_classes(weights, report, meta)
    if layout == "mmdet":
        report.notes.append("mmdetection's Res2Net: no stage pool where the stride is 1 "
                            "(the detector's backbone is built so)")
    return weights, report


def _check_classes(weights, report, meta):
    """The classifiers put background last (one row more than the classes) and agree with
    the class names the file stores."""
    classifiers = [k for k in weights if k.endswith("fc_cls.weight")]
    if not classifiers:
        return
    num_classes = weights[classifiers[0]].shape[0] - 1
    classes = meta.get("classes")
    if classes is not None and len(classes) != num_classes:
        report.mismatched.append(("classes", len(classes), num_classes))
    report.notes.append(f"{num_classes} classes, background last"
                        + (f" ({classes[0]}, ..., {classes[-1]})" if classes else ""))


# The layers whose shapes follow the class count (fine-tuning onto other classes renews them).
CLASS_LAYERS = re.compile(r"\.(fc_cls|fc_reg|conv_logits)\.(weight|bias)$")


def convert_detector_checkpoint(src, targets, out=None, model_name="?", new_classes=False):
    """Convert the detector checkpoint ``src`` for a detector with parameters ``targets``.

    Strict: nothing is written unless every parameter is found with its shape; with
    ``new_classes``, but for the class layers (:data:`CLASS_LAYERS`) of another class count,
    which are left out (as mmdetection's ``load_from`` leaves them when fine-tuning onto
    other classes). Writes ``out`` (one MindSpore .ckpt, with the class names when the source
    names them) if given. Returns ``(weights, report, meta)``.
    """
    state, meta = read_detector_checkpoint(src)
    weights, report = map_detector(state, targets, meta, str(src), model_name)
    if new_classes:
        renewed = {m[0] for m in report.mismatched if CLASS_LAYERS.search(str(m[0]))}
        report.mismatched = [m for m in report.mismatched
                             if m[0] not in renewed and m[0] != "classes"]
        report.missing = [n for n in report.missing if n not in renewed]
        if renewed:
            report.notes.append(f"{len(renewed)} class layers of another class count left "
                                "out: they start afresh")
            meta = dict(meta, classes=None)
    check_strict(report)
    if out is not None:
        marks = {SOURCE_KEY: "mmdet"} if report.layout == "mmdet" else {}
        if meta.get("classes"):
            marks[CLASSES_KEY] = json.dumps(list(meta["classes"]))
        save_ckpt(weights, out, append_dict=marks or None)
    return weights, report, meta
