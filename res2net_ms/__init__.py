"""res2net_ms: the Res2Net family of image backbones for MindSpore."""
from .factory import create_model
from .models import Bottle2neck, DLA, Res2Net, get_model_config, list_models

__version__ = "0.1.0"

__all__ = ["Bottle2neck", "DLA", "Res2Net", "create_model", "get_model_config", "list_models"]
