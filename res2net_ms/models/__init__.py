"""Res2Net networks as MindSpore cells, and the model zoo."""
from .block import Bottle2neck
from .dla import DLA
from .registry import ModelConfig, create_model, get_model_config, list_models
from .res2net import Res2Net

__all__ = ["Bottle2neck", "DLA", "ModelConfig", "Res2Net", "create_model", "get_model_config",
           "list_models"]
