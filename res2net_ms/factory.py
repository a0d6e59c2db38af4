"""``create_model``: a zoo network by name, with its weights loaded through the converter.

This sits above the zoo (:mod:`res2net_ms.models`), the converter
(:mod:`res2net_ms.convert`) and the pretrained-weights cache (:mod:`res2net_ms.hub`), as timm's
``_builder.py`` beside its ``_registry.py`` and ``_hub.py``.
"""
import os
from typing import Mapping, Optional, Sequence, Union

from mindspore import nn

from .convert import load_into, network_args, read_state
from .hub import pretrained_path
from .models import build_network, get_model_config

__all__ = ["create_model"]


def create_model(name: str, num_classes: int = 1000, in_channels: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 checkpoint_path: Union[str, os.PathLike, Mapping, None] = None,
                 features_only: bool = False, out_indices: Optional[Sequence[int]] = None,
                 frozen_stages: int = -1, norm_eval: bool = False, output_stride: int = 32,
                 pretrained: bool = False, cache_dir: Optional[str] = None,
                 **kwargs) -> nn.Cell:
    """Build a zoo model by name.

    Args:
        name: a name or alias from :func:`list_models`.
        num_classes: classifier outputs (0: pooled features).
        in_channels: input channels (3-channel weights are adapted to others, as timm does).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth over the blocks (really applied).
        checkpoint_path: weights to load: a MindSpore ``.ckpt`` or any PyTorch/safetensors file
            the converter reads (or the tensors it read from one). A classifier of another
            size is left out and re-initialised.
        features_only: return stage feature maps instead of logits.
        out_indices: stages returned with ``features_only`` (default: every stage after the
            stem: 1..4 for ResNet layouts at strides 4-32, 0..5 for DLA levels).
        frozen_stages: freeze the stem and stages 1..k (-1: none).
        norm_eval: keep every BN in inference mode.
        output_stride: 32, 16 or 8 (dilated last stages; ResNet layouts only).
        pretrained: load the official ImageNet weights (downloaded, checked and converted once
            into the cache; see :mod:`res2net_ms.hub`) unless ``checkpoint_path`` is given.
        cache_dir: the cache folder of ``pretrained`` (default ``$R2N_CACHE_DIR`` or
            ``~/.cache/res2net_ms``).
        **kwargs: network arguments overriding the model's own (e.g. ``zero_init_last``).
    """
    cfg = get_model_config(name)
    if pretrained and not checkpoint_path:
        checkpoint_path = pretrained_path(cfg.name, cache_dir)
    args = dict(num_classes=num_classes, in_channels=in_channels, drop_rate=drop_rate,
                drop_path_rate=drop_path_rate, features_only=features_only,
                frozen_stages=frozen_stages, norm_eval=norm_eval, output_stride=output_stride)
    if out_indices is not None:
        args["out_indices"] = out_indices
    state = read_state(checkpoint_path) if checkpoint_path else None  # read once
    if state is not None:  # e.g. mmdetection weights: stride1_pool=False
        kwargs = {**network_args(state), **kwargs}
    net = build_network(cfg, **args, **kwargs)
    if state is not None:
        load_into(net, state, model_name=cfg.name)
    return net
