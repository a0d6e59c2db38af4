"""res2net_ms: the Res2Net family of image backbones for MindSpore, and detectors on them."""
from .det import create_detector
from .factory import create_model
from .models import Bottle2neck, DLA, Res2Net, get_model_config, list_models

__version__ = "0.1.0"

__all__ = ["Bottle2neck", "DLA", "Res2Net", "create_detector", "create_model", "get_model_config",
           "list_models", "predict"]


def __getattr__(name):
    """``res2net_ms.predict(...)``, imported on first use: importing it here would make
    ``python -m res2net_ms.predict`` warn that the module was already imported."""
    if name == "predict":
        from .predict import predict

        globals()["predict"] = predict
        return predict
    raise AttributeError(f"module 'res2net_ms' has no attribute '{name}'")
