"""Key layouts of published Res2Net checkpoints, and the renames between them.

Every source is first brought to the *official* PyTorch key names (which timm shares), then
to ours: the official names with MindSpore's BN leaf names. The tables are those of
``anchors-res2net.md`` section 7.
"""
import re

import numpy as np

LAYOUTS = ("official", "mmpretrain", "mmdet", "mindcv", "res2net_ms")

BN_TO_MS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
            "running_var": "moving_variance"}
BN_TO_TORCH = {v: k for k, v in BN_TO_MS.items()}

# Entries of MindSpore training checkpoints that are not network weights.
_MS_TRAINING_EXTRAS = re.compile(
    r"^(moments|accum|moment1|moment2|ema|adam_m|adam_v|global_step|learning_rate|momentum|"
    r"scale_sense|updates|beta1_power|beta2_power|current_iterator_step|meta|ema_updates|"
    r"loss_scale_good_steps|last_overflow_iterator_step|epoch_num|step_num)(\.|$)")

_MMPRETRAIN_STEM = {"stem.0.conv": "conv1.0", "stem.0.bn": "conv1.1", "stem.1.conv": "conv1.3",
                    "stem.1.bn": "conv1.4", "stem.2.conv": "conv1.6", "stem.2.bn": "bn1"}
_MMDET_STEM = {"stem.0": "conv1.0", "stem.1": "conv1.1", "stem.3": "conv1.3",
               "stem.4": "conv1.4", "stem.6": "conv1.6", "stem.7": "bn1"}


def detect_layout(keys):
    """Name the layout of a state dict from its keys (see :data:`LAYOUTS`)."""
    keys = set(keys)
    if any(k.endswith((".moving_mean", ".gamma")) for k in keys):
        mindcv = any(".down_sample." in k or k.startswith("classifier.") for k in keys)
        return "mindcv" if mindcv else "res2net_ms"
    bare = {k[len("backbone."):] for k in keys if k.startswith("backbone.")}
    if not bare and "stem.7.weight" in keys:
        return "mmdet"
    if not bare and any(k.startswith("stem.0.conv.") for k in keys):
        return "mmpretrain"
    if bare:
        if "stem.7.weight" in bare and not any(k.startswith("head.fc.") for k in keys):
            return "mmdet"
        return "mmpretrain"
    return "official"


def to_official(state, layout, dropped):
    """Rename ``state`` (name -> array) from ``layout`` to official PyTorch names.

    What is not part of the network is moved to ``dropped`` (category -> names).
    """
    out = {}
    deep_stem = any(k.endswith("conv1.0.weight") or ".stem." in "." + k for k in state)
    for key, value in state.items():
        name = _rename(key, layout, deep_stem)
        if name is None:
            category = "training state" if layout in ("mindcv", "res2net_ms") else (
                "non-backbone (neck/heads)")
            dropped.setdefault(category, []).append(key)
        elif name.endswith("num_batches_tracked"):
            dropped.setdefault("num_batches_tracked", []).append(key)
        else:
            out[name] = value
    return out


def _rename(key, layout, deep_stem):
    if layout in ("mindcv", "res2net_ms"):
        if _MS_TRAINING_EXTRAS.match(key):
            return None
        key = _ms_to_torch_leaf(key)
        if layout == "mindcv":
            key = key.replace(".down_sample.", ".downsample.")
            key = re.sub(r"^classifier\.", "fc.", key)
            if deep_stem:  # mindcv's v1b layer1.0 shortcut has no pool cell: shift the indices
                key = re.sub(r"^layer1\.0\.downsample\.([01])\.",
                             lambda m: f"layer1.0.downsample.{int(m.group(1)) + 1}.", key)
        return key
    if layout in ("mmpretrain", "mmdet"):
        if key.startswith("backbone."):
            key = key[len("backbone."):]
        elif key.startswith("head.fc."):
            return "fc." + key[len("head.fc."):]
        elif any(key.startswith(p) for p in ("neck.", "head.", "rpn_head.", "roi_head.",
                                             "bbox_head.", "mask_head.", "data_preprocessor.")):
            return None
        stem = _MMPRETRAIN_STEM if layout == "mmpretrain" else _MMDET_STEM
        for src, dst in stem.items():
            if key.startswith(src + "."):
                return dst + key[len(src):]
    return key


def _ms_to_torch_leaf(key):
    base, _, leaf = key.rpartition(".")
    return f"{base}.{BN_TO_TORCH[leaf]}" if leaf in BN_TO_TORCH else key


def official_to_ours(state):
    """Official PyTorch names -> ours: BN leaves become gamma/beta/moving_*."""
    bn_modules = {k[: -len(".running_mean")] for k in state if k.endswith(".running_mean")}
    out = {}
    for key, value in state.items():
        base, _, leaf = key.rpartition(".")
        out[f"{base}.{BN_TO_MS[leaf]}" if base in bn_modules else key] = value
    return out


def ours_to_official(state):
    """Our names -> official PyTorch names, with the ``num_batches_tracked`` PyTorch expects."""
    out = {}
    for key, value in state.items():
        base, _, leaf = key.rpartition(".")
        if leaf in BN_TO_TORCH:
            out[f"{base}.{BN_TO_TORCH[leaf]}"] = value
            if leaf == "moving_mean":
                out[f"{base}.num_batches_tracked"] = np.zeros((), np.int64)
        else:
            out[key] = value
    return out
