"""Checkpoint conversion between published Res2Net weights and this project.

Reads PyTorch (``.pth``/``.pt``/``.bin``, without torch), safetensors and mindcv ``.ckpt``
files in the official, timm, mmpretrain, mmdetection and mindcv layouts.
"""
from ..ckpt import save_ckpt
from .converter import (ConversionReport, adapt_input_conv, convert_checkpoint, export_torch,
                        load_into, network_args, read_state)
from .errors import CheckpointFormatError, CheckpointMismatchError, UnsafeCheckpointError

__all__ = ["CheckpointFormatError", "CheckpointMismatchError", "ConversionReport",
           "UnsafeCheckpointError", "adapt_input_conv", "convert_checkpoint", "export_torch",
           "load_into", "network_args", "read_state", "save_ckpt"]
