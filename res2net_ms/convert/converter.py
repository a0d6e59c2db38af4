"""Checkpoint conversion: any published Res2Net checkpoint -> our parameter names, strictly.

The converter knows the zoo's data (:mod:`res2net_ms.models`): which network a name builds,
its classifier and first conv. It never needs the engine or the factory.
"""
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

import mindspore as ms
import numpy as np
from mindspore import nn
from mindspore.nn.utils import no_init_parameters

from ..ckpt import CheckpointReadError, load_ckpt, save_ckpt
from ..models import MODELS, build_network, get_model_config
from .errors import CheckpointFormatError, CheckpointMismatchError
from .layouts import LAYOUTS, detect_layout, official_to_ours, ours_to_official, to_official
from .readers import checkpoint_format, load_any, save_safetensors

__all__ = ["ConversionReport", "State", "read_state", "param_shapes", "map_to_network",
           "check_strict",
           "convert_checkpoint", "export_torch", "load_into", "adapt_input_conv", "network_args"]

_WRAPPERS = ("state_dict", "model", "module", "network")
# String entry of converted .ckpt files naming the layout of weights that need other network
# arguments (see :func:`network_args`).
SOURCE_KEY = "source_layout"


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


class State(dict):
    """A checkpoint's tensors, ``{name: numpy array}``; ``source`` names the file it was read
    from, ``marks`` holds the string entries of a ``.ckpt`` (e.g. ``source_layout``) and
    ``meta`` the ``meta`` dict of an mmengine / mmdetection file (versions, class names)."""

    def __init__(self, tensors, source, marks=None, meta=None):
        super().__init__(tensors)
        self.source = source
        self.marks = dict(marks or {})
        self.meta = dict(meta or {})


def read_state(path):
    """Read any supported file (PyTorch, safetensors or MindSpore ``.ckpt``, recognised by
    :func:`~.readers.checkpoint_format`) into a flat :class:`State`."""
    if isinstance(path, State):
        return path
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if checkpoint_format(path) == "ckpt":
        try:
            params = load_ckpt(path)
        except CheckpointReadError as exc:
            raise CheckpointFormatError(str(exc)) from None
        return State({k: v.asnumpy() for k, v in params.items() if hasattr(v, "asnumpy")}, path,
                     {k: v for k, v in params.items() if isinstance(v, str)})
    obj = load_any(path)
    meta = obj.get("meta") if isinstance(obj, dict) and isinstance(obj.get("meta"), dict) \
        else None
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
    return State(state, path, meta=meta)


def _is_state(obj):
    return bool(obj) and sum(isinstance(v, np.ndarray) for v in obj.values()) > len(obj) // 2


def param_shapes(net):
    """``{name: shape}`` of every parameter of ``net`` (BN statistics included)."""
    return {p.name: tuple(p.shape) for p in net.get_parameters()}


def adapt_input_conv(weight, in_channels):
    """3-channel first-conv weights for ``in_channels`` inputs, as timm's ``adapt_input_conv``.

    One channel takes the sum over RGB; more channels repeat RGB and rescale by
    ``3 / in_channels`` so that the activations keep their magnitude.
    """
    if in_channels == 1:
        return weight.sum(axis=1, keepdims=True)
    repeat = -(-in_channels // 3)
    return np.tile(weight, (1, repeat, 1, 1))[:, :in_channels] * (3.0 / in_channels)


def map_to_network(state, targets, source="auto", source_name="<memory>", model_name="?",
                   keep_head=True, classifier="fc", first_conv=None):
    """Rename ``state`` to the parameter names of ``targets`` (see :func:`param_shapes`) and
    check every shape.

    Returns ``(weights, report)``: ``weights`` maps our names to arrays for every network
    parameter the checkpoint provides. The classifier (the cell named ``classifier``) is left
    out, and reported, when ``keep_head`` is False or its shape differs from the network's.
    RGB weights of ``first_conv`` are adapted to the network's input channels.
    """
    layout = detect_layout(state) if source == "auto" else source
    if layout not in LAYOUTS:
        raise ValueError(f"unknown source layout '{source}': choose from auto, "
                         + ", ".join(LAYOUTS) + " (timm = official)")
    report = ConversionReport(source_name, layout, model_name)
    ours = official_to_ours(to_official(state, layout, report.dropped))
    prefix = classifier + "."
    head = {k for k in targets if k.startswith(prefix)}
    weights = {}
    for name, value in ours.items():
        if name.startswith(prefix) and not keep_head:
            report.dropped.setdefault("classifier (left out)", []).append(name)
            continue
        if name not in targets:
            category = "classifier (not in network)" if name.startswith(prefix) else "unexpected"
            report.dropped.setdefault(category, []).append(name)
            continue
        if name == prefix + "weight" and value.ndim == 4:  # a 1x1-conv classifier (DLA)
            value = value.reshape(value.shape[:2])
        if name == first_conv and _adaptable(value.shape, targets[name]):
            report.notes.append(f"{name}: RGB weights adapted to {targets[name][1]} input "
                                f"channels")
            value = adapt_input_conv(value, targets[name][1])
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
        report.notes.append("mmdetection's Res2Net skips the stage pool where the stride is 1 "
                            "(layer1.0): create_model builds it so for these weights "
                            "(stride1_pool=False)")
    if report.dropped.get("unexpected"):
        report.mismatched += [(n, "unexpected", None) for n in report.dropped["unexpected"]]
    return weights, report


def _adaptable(shape, target):
    """An RGB conv weight whose target differs only in its input channels."""
    return (len(shape) == 4 and len(target) == 4 and shape[1] == 3 and target[1] != 3
            and shape[0] == target[0] and shape[2:] == tuple(target[2:]))


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


def _shapes_of(cfg, **kwargs):
    with no_init_parameters():  # shapes only: skip drawing millions of random weights
        net = build_network(cfg, **kwargs)
    return param_shapes(net), net


def _models_that_fit(state):
    """Zoo models whose every backbone parameter the checkpoint provides with the right shape.

    Only models whose first conv the checkpoint holds are built (building all is slow).
    """
    ours = official_to_ours(to_official(state, detect_layout(state), {}))
    fits = []
    for name, cfg in MODELS.items():
        if cfg.first_conv not in ours:
            continue
        targets, _ = _shapes_of(cfg)
        _, report = map_to_network(state, targets, keep_head=False, classifier=cfg.classifier)
        if not report.missing and not report.mismatched:
            fits.append(name)
    return fits


def _new_head(classifier, width, num_classes):
    """Freshly initialised classifier weights, as the network itself would create them."""
    dense = nn.Dense(width, num_classes)
    return {f"{classifier}.weight": dense.weight.asnumpy(),
            f"{classifier}.bias": dense.bias.asnumpy()}


def convert_checkpoint(src: Union[str, "os.PathLike", "State"], model_name: str,
                       out: Optional[str] = None, source: str = "auto",
                       num_classes: Optional[int] = None,
                       drop_head: bool = False) -> Tuple[Dict[str, np.ndarray], ConversionReport]:
    """Convert ``src`` (PyTorch, safetensors or mindcv file) for the zoo model ``model_name``.

    Strict: nothing is written unless every network parameter is found with its shape.
    ``num_classes`` re-initialises the classifier with that many outputs; ``drop_head`` leaves
    it out. A source without any classifier (mmdetection) gives a backbone-only checkpoint.
    Returns ``(weights, report)`` and writes ``out`` (a MindSpore ``.ckpt``) if given.
    """
    cfg = get_model_config(model_name)
    state = read_state(src)
    targets, net = _shapes_of(cfg, num_classes=_head_rows(state, cfg) or 1000)
    weights, report = map_to_network(state, targets, source, state.source, cfg.name,
                                     keep_head=not drop_head and num_classes is None,
                                     classifier=cfg.classifier)
    check_strict(report, state)
    if not drop_head and num_classes is not None:
        weights.update(_new_head(cfg.classifier, net.num_features, num_classes))
        report.notes.append(f"classifier re-initialised with {num_classes} classes")
    elif not any(k.startswith(cfg.classifier + ".") for k in weights):
        report.notes.append("no classifier in the checkpoint: use with features_only=True, "
                            "or fine-tune with a new classifier")
    if out is not None:
        marks = {SOURCE_KEY: "mmdet"} if report.layout == "mmdet" else None
        save_ckpt(weights, out, append_dict=marks)
    return weights, report


def network_args(state):
    """Network arguments the weights of ``state`` (a :class:`State` or a file) were trained
    with, beyond the zoo config.

    mmdetection's Res2Net skips the stage pool where the stride is 1, so its checkpoints, and
    ours converted from them (marked ``source_layout: mmdet``), need ``stride1_pool=False``.
    """
    state = read_state(state)
    mmdet = state.marks.get(SOURCE_KEY) == "mmdet" or detect_layout(state) == "mmdet"
    return {"stride1_pool": False} if mmdet else {}


def _head_rows(state, cfg):
    for key in (f"{cfg.classifier}.weight", "fc.weight", "head.fc.weight", "classifier.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def export_torch(ckpt, out, model_name=None):
    """Write one of our checkpoints in the official PyTorch layout (``.safetensors``).

    The file loads with ``load_state_dict(strict=True)`` into the official model (and timm's).
    """
    state = read_state(ckpt)
    layout = detect_layout(state)
    if layout not in ("res2net_ms", "mindcv"):
        raise ValueError(f"{ckpt}: expected a MindSpore checkpoint of this project, "
                         f"found the {layout} layout")
    official = ours_to_official(official_to_ours(to_official(state, layout, {})))
    if model_name is not None:
        cfg = get_model_config(model_name)
    else:  # guess from the keys: the first zoo model whose first conv the checkpoint has
        cfg = next((c for c in MODELS.values() if c.first_conv in official), MODELS[
            "res2net50_26w_4s"])
    weight = f"{cfg.classifier}.weight"
    if cfg.conv_classifier and weight in official and official[weight].ndim == 2:
        official[weight] = official[weight][:, :, None, None]
    save_safetensors(official, out, metadata={"format": "pt"})
    return official


def load_arrays(net, weights):
    """Put ``{name: array}`` (names and shapes already checked) into ``net``; returns the names
    of its parameters that were not given."""
    params = {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in weights.items()}
    not_loaded, _ = ms.load_param_into_net(net, params, strict_load=True)
    return not_loaded


def load_into(net, path, model_name="?", use_ema=False):
    """Load ``path`` (a file, or a :class:`State` read from one) into ``net`` (used by
    ``create_model(checkpoint_path=...)``).

    Every backbone parameter must be found; a classifier of another size, or one the
    network does not have (``features_only``), is skipped and left as initialised.
    With ``use_ema`` the ``ema.*`` weights of a training checkpoint are loaded.
    """
    cfg = getattr(net, "default_cfg", None) or get_model_config(model_name)
    state = read_state(path)
    path = state.source
    if use_ema:
        ema = {k[len("ema."):]: v for k, v in state.items() if k.startswith("ema.")}
        if not ema:
            raise CheckpointMismatchError(f"{path}: has no EMA weights (ema.*)")
        state = ema
    weights, report = map_to_network(state, param_shapes(net), source_name=str(path),
                                     model_name=model_name, classifier=cfg.classifier,
                                     first_conv=cfg.first_conv)
    check_strict(report, state)
    if report.dropped.get("classifier (other num_classes)"):
        report.notes.append(f"classifier re-initialised: the checkpoint has "
                            f"{_head_rows(state, cfg)} classes, the model {net.num_classes}")
    not_loaded = load_arrays(net, weights)
    if any(not n.startswith(cfg.classifier + ".") for n in not_loaded):
        raise CheckpointMismatchError(f"{path}: parameters not loaded: {not_loaded[:5]}")
    net.load_report = report
    return report
