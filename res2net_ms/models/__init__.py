"""Res2Net networks as MindSpore cells, and the model zoo's data (names and configs)."""
from .block import Bottle2neck
from .dla import DLA
from .fuse import ExplicitPadPool, export_form, fuse_bn
from .registry import MODELS, ModelConfig, build_network, get_model_config, list_models
from .res2net import Res2Net

__all__ = ["MODELS", "Bottle2neck", "DLA", "ExplicitPadPool", "ModelConfig", "Res2Net",
           "build_network", "export_form", "fuse_bn", "get_model_config", "list_models"]
