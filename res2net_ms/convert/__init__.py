"""Checkpoint conversion between published Res2Net weights and this project.

Reads PyTorch (``.pth``/``.pt``/``.bin``, without torch), safetensors and mindcv ``.ckpt``
files in the official, timm, mmpretrain, mmdetection and mindcv layouts.
"""
from .converter import (CheckpointMismatchError, ConversionReport, convert_checkpoint,
                        export_torch, load_into, read_state, save_ckpt)
from .readers import CheckpointFormatError, UnsafeCheckpointError

__all__ = ["CheckpointFormatError", "CheckpointMismatchError", "ConversionReport",
           "UnsafeCheckpointError", "convert_checkpoint", "export_torch", "load_into",
           "read_state", "save_ckpt"]
