"""Checkpoint conversion: any published Res2Net checkpoint -> our parameter names, strictly."""
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from .layouts import LAYOUTS, detect_layout, official_to_ours, ours_to_official, to_official
from .readers import CheckpointFormatError, load_any, save_safetensors

_WRAPPERS = ("state_dict", "model", "module", "network")


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the network (missing or wrongly shaped parameters)."""


@dataclass
class ConversionReport:
    """What a conversion did, printed by the command line."""

    source: str
    layout: str
    model: str
    mapped: int = 0
    dropped: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def __str__(self):
        lines = [f"source:     {self.source} ({self.layout} layout)",
                 f"model:      {self.model}",
                 f"mapped:     {self.mapped} tensors"]
        for category, names in sorted(self.dropped.items()):
            lines.append(f"dropped:    {len(names)} {category} (e.g. {names[0]})")
        lines.append(f"missing:    {len(self.missing)}"
                     + (f" ({', '.join(self.missing[:4])})" if self.missing else ""))
        lines.append(f"mismatched: {len(self.mismatched)}")
        lines += [f"note:       {n}" for n in self.notes]
        return "\n".join(lines)


def read_state(path):
    """Read any supported file into a flat ``{name: numpy array}`` dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".ckpt") and not _is_zip(path):
        import mindspore as ms

        try:
            params = ms.load_checkpoint(path)
        except Exception as exc:  # MindSpore raises several types with multi-line messages
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointFormatError(f"{path}: not a readable MindSpore checkpoint ({first})")
        return {k: v.asnumpy() for k, v in params.items() if hasattr(v, "asnumpy")}
    obj = load_any(path)
    for _ in range(3):  # unwrap {'state_dict': ...}, {'model': ...}, mmengine {'meta', ...}
        if isinstance(obj, dict) and not _is_state(obj):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _is_state(obj):
        raise CheckpointFormatError(f"{path}: holds no state dict of tensors")
    state = {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_zip(path):
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _is_state(obj):
    return bool(obj) and sum(isinstance(v, np.ndarray) for v in obj.values()) > len(obj) // 2


def param_shapes(net):
    """``{name: shape}`` of every parameter of ``net`` (BN statistics included)."""
    return {p.name: tuple(p.shape) for p in net.get_parameters()}


def map_to_network(state, targets, source="auto", source_name="<memory>", model_name="?",
                   keep_head=True):
    """Rename ``state`` to the parameter names of ``targets`` (see :func:`param_shapes`) and
    check every shape.

    Returns ``(weights, report)``: ``weights`` maps our names to arrays for every network
    parameter the checkpoint provides. The classifier is left out (and reported) when
    ``keep_head`` is False or its shape differs from the network's.
    """
    layout = detect_layout(state) if source == "auto" else source
    if layout not in LAYOUTS:
        raise ValueError(f"unknown source layout '{source}': choose from auto, "
                         + ", ".join(LAYOUTS) + " (timm = official)")
    report = ConversionReport(source_name, layout, model_name)
    official = to_official(state, layout, report.dropped)
    ours = official_to_ours(official)
    head = {k for k in targets if k.startswith("fc.")}
    weights = {}
    for name, value in ours.items():
        if name.startswith("fc.") and not keep_head:
            report.dropped.setdefault("classifier (left out)", []).append(name)
            continue
        if name not in targets:
            category = "classifier (not in network)" if name.startswith("fc.") else "unexpected"
            report.dropped.setdefault(category, []).append(name)
            continue
        if name == "fc.weight" and value.ndim == 4:  # official DLA classifier is a 1x1 conv
            value = value.reshape(value.shape[:2])
        if tuple(value.shape) != targets[name]:
            if name in head:
                report.dropped.setdefault("classifier (other num_classes)", []).append(name)
                continue
            report.mismatched.append((name, tuple(value.shape), targets[name]))
            continue
        weights[name] = value
    report.missing = [n for n in targets if n not in weights and n not in head]
    head_missing = [n for n in head if n not in weights]
    if head_missing and len(head_missing) < len(head):
        report.missing += head_missing
    report.mapped = len(weights)
    if layout == "mmdet":
        report.notes.append("mmdetection's Res2Net skips the layer1.0 stage pool, which this "
                            "(official) network applies: features differ slightly (~3e-2 at "
                            "stage 1) until fine-tuned")
    if report.dropped.get("unexpected"):
        report.mismatched += [(n, "unexpected", None) for n in report.dropped["unexpected"]]
    return weights, report


def check_strict(report, state=None):
    """Raise :class:`CheckpointMismatchError` unless every network parameter was matched."""
    if not report.missing and not report.mismatched:
        return
    problems = [f"missing {n}" for n in report.missing[:5]]
    problems += [f"{n}: checkpoint {a} vs network {b}" if b else f"unexpected {n}"
                 for n, a, b in report.mismatched[:5]]
    fits = _models_that_fit(state) if state is not None else []
    hint = f"; the checkpoint fits {', '.join(fits)}" if fits else ""
    raise CheckpointMismatchError(
        f"{report.source} does not fit {report.model} ({report.layout} layout): "
        f"{len(report.missing)} missing, {len(report.mismatched)} mismatched: "
        + "; ".join(problems) + hint)


def _models_that_fit(state):
    """Zoo models whose every backbone parameter the checkpoint provides with the right shape."""
    from mindspore.nn.utils import no_init_parameters

    from ..models.registry import MODELS

    fits = []
    for name, cfg in MODELS.items():
        with no_init_parameters():  # shapes only: skip drawing millions of random weights
            targets = param_shapes(cfg.arch(**cfg.kwargs))
        _, report = map_to_network(state, targets, keep_head=False)
        if not report.missing and not report.mismatched:
            fits.append(name)
    return fits


def _new_head(model_name, num_classes):
    """Freshly initialised classifier weights, as the network itself would create them."""
    from mindspore import nn

    from ..models.registry import get_model_config

    width = 1024 if get_model_config(model_name).arch.__name__ == "DLA" else 2048
    dense = nn.Dense(width, num_classes)
    return {"fc.weight": dense.weight.asnumpy(), "fc.bias": dense.bias.asnumpy()}


def convert_checkpoint(src, model_name, out=None, source="auto", num_classes=None,
                       drop_head=False):
    """Convert ``src`` (PyTorch, safetensors or mindcv file) for the zoo model ``model_name``.

    Strict: nothing is written unless every network parameter is found with its shape.
    ``num_classes`` re-initialises the classifier with that many outputs; ``drop_head`` leaves
    it out. A source without any classifier (mmdetection) gives a backbone-only checkpoint.
    Returns ``(weights, report)`` and writes ``out`` (a MindSpore ``.ckpt``) if given.
    """
    from mindspore.nn.utils import no_init_parameters

    from ..models.registry import create_model, get_model_config

    cfg = get_model_config(model_name)
    state = read_state(src)
    with no_init_parameters():
        targets = param_shapes(create_model(cfg.name, num_classes=_head_rows(state) or 1000))
    weights, report = map_to_network(state, targets, source, str(src), cfg.name,
                                     keep_head=not drop_head and num_classes is None)
    check_strict(report, state)
    if not drop_head and num_classes is not None:
        weights.update(_new_head(cfg.name, num_classes))
        report.notes.append(f"classifier re-initialised with {num_classes} classes")
    elif not any(k.startswith("fc.") for k in weights):
        report.notes.append("no classifier in the checkpoint: use with features_only=True, "
                            "or fine-tune with a new classifier")
    if report.layout == "mmdet":
        warnings.warn(report.notes[0], stacklevel=2)
    if out is not None:
        save_ckpt(weights, out)
    return weights, report


def _head_rows(state):
    for key in ("fc.weight", "head.fc.weight", "classifier.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def save_ckpt(weights, path, append_dict=None):
    """Write ``{name: array or Tensor}`` as a MindSpore checkpoint, atomically.

    The file is written under a temporary name in the same folder, then renamed, so a crash
    never leaves a truncated checkpoint under the real name. ``append_dict`` holds extra
    scalar/string entries (training metadata).
    """
    import mindspore as ms

    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    # save_checkpoint appends ".ckpt" to other names, so the temporary name ends with it.
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp.ckpt")
    items = [{"name": k, "data": v if isinstance(v, ms.Tensor) else ms.Tensor(v)}
             for k, v in weights.items()]
    try:
        ms.save_checkpoint(items, tmp, append_dict=append_dict)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def export_torch(ckpt, out, model_name=None):
    """Write one of our checkpoints in the official PyTorch layout (``.safetensors``).

    The file loads with ``load_state_dict(strict=True)`` into the official model (and timm's).
    """
    state = read_state(ckpt)
    layout = detect_layout(state)
    if layout not in ("res2net_ms", "mindcv"):
        raise ValueError(f"{ckpt}: expected a MindSpore checkpoint of this project, "
                         f"found the {layout} layout")
    dropped = {}
    official = ours_to_official(official_to_ours(to_official(state, layout, dropped)))
    is_dla = any(k.startswith("base_layer.") for k in official)
    if model_name is not None:
        from ..models.registry import get_model_config

        is_dla = get_model_config(model_name).arch.__name__ == "DLA"
    if is_dla and "fc.weight" in official and official["fc.weight"].ndim == 2:
        official["fc.weight"] = official["fc.weight"][:, :, None, None]
    save_safetensors(official, out, metadata={"format": "pt"})
    return official


def load_into(net, path, model_name="?", use_ema=False):
    """Load ``path`` into ``net`` (used by ``create_model(checkpoint_path=...)``).

    Every backbone parameter must be found; a classifier of another size, or one the
    network does not have (``features_only``), is skipped and left as initialised.
    With ``use_ema`` the ``ema.*`` weights of a training checkpoint are loaded.
    """
    import mindspore as ms

    state = read_state(path)
    if use_ema:
        ema = {k[len("ema."):]: v for k, v in state.items() if k.startswith("ema.")}
        if not ema:
            raise CheckpointMismatchError(f"{path}: has no EMA weights (ema.*)")
        state = ema
    weights, report = map_to_network(state, param_shapes(net), source_name=str(path),
                                     model_name=model_name)
    check_strict(report, state)
    if report.dropped.get("classifier (other num_classes)"):
        report.notes.append(f"classifier re-initialised: the checkpoint has "
                            f"{_head_rows(state)} classes, the model {net.num_classes}")
    params = {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in weights.items()}
    not_loaded, _ = ms.load_param_into_net(net, params, strict_load=True)
    if any(not n.startswith("fc.") for n in not_loaded):
        raise CheckpointMismatchError(f"{path}: parameters not loaded: {not_loaded[:5]}")
    net.load_report = report
    return report
