"""res2net_ms: the Res2Net family of image backbones for MindSpore, and detectors on them."""
from .lazy import lazy_names
from .models import Bottle2neck, DLA, Res2Net, get_model_config, list_models

__version__ = "0.1.0"

# Imported on first use: the factories bring the converter and the hub, which the parts of the
# package (``res2net_ms.det.fpn``, ``res2net_ms.fileio``) do not need; and importing predict
# here would make ``python -m res2net_ms.predict`` warn that the module was already imported.
_NAMES = {"create_detector": ".det", "create_model": ".factory", "predict": ".predict"}
__all__ = ["Bottle2neck", "DLA", "Res2Net", "get_model_config", "list_models", *_NAMES]
__getattr__ = lazy_names(__name__, _NAMES)
