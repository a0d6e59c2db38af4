"""The model zoo's data: every published Res2Net by name, with its config.

Building a model with weights is :func:`res2net_ms.factory.create_model`, one layer up.
"""
import difflib
import fnmatch
from dataclasses import dataclass, field, replace

from .dla import DLA
from .res2net import Res2Net

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_URL = "https://shanghuagao.oss-cn-beijing.aliyuncs.com/res2net/"


@dataclass(frozen=True)
class ModelConfig:
    """What a user needs to run a model: preprocessing, layer names, published results.

    ``params`` is the trainable-parameter count with 1000 classes (equal to the official
    PyTorch model); ``top1``/``top5`` and ``gmacs`` are the published ImageNet numbers
    (None where none were published); ``weights`` is the official PyTorch file name.
    ``first_conv`` and ``classifier`` name the input conv's weight and the classifier cell
    (the converter adapts the one and re-initialises the other); ``conv_classifier`` says the
    official checkpoint stores the classifier as a 1x1 conv (DLA). ``extra`` holds notes
    (``weights_note``: where weights exist that cannot be downloaded by URL).
    ``counted_gmacs`` is what ``python -m res2net_ms.summary`` counts at 224 px (convolutions
    and classifier that run); the published ``gmacs`` are rounded to one decimal.
    """

    name: str
    arch: type
    kwargs: dict
    params: int
    top1: float = None
    top5: float = None
    gmacs: float = None
    weights: str = None
    first_conv: str = "conv1.weight"
    classifier: str = "fc"
    conv_classifier: bool = False
    aliases: tuple = ()
    input_size: tuple = (3, 224, 224)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    num_classes: int = 1000
    extra: dict = field(default_factory=dict)
    counted_gmacs: float = None

    @property
    def url(self):
        return OFFICIAL_URL + self.weights if self.weights else None

    def to_dict(self):
        """Plain values only (for logs and saved configs)."""
        keys = ("name", "params", "top1", "top5", "gmacs", "weights", "url", "first_conv",
                "classifier", "input_size", "mean", "std", "crop_pct", "interpolation",
                "num_classes", "counted_gmacs")
        return {k: getattr(self, k) for k in keys}


def _v1(layers, base_width, scale):
    return dict(layers=layers, base_width=base_width, scale=scale)


def _v1b(layers):
    return dict(layers=layers, base_width=26, scale=4, deep_stem=True, avg_down=True)


_L50, _L101, _L152 = (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)
_DEEP = dict(first_conv="conv1.0.weight")

_CONFIGS = [
    ModelConfig("res2net50_26w_4s", Res2Net, _v1(_L50, 26, 4), 25_699_120, 77.99, 93.85, 4.2,
                "res2net50_26w_4s-06e79181.pth", aliases=("res2net50",)),
    ModelConfig("res2net50_48w_2s", Res2Net, _v1(_L50, 48, 2), 25_287_304, 77.32, 93.53, 4.2,
                "res2net50_48w_2s-afed724a.pth"),
    ModelConfig("res2net50_14w_8s", Res2Net, _v1(_L50, 14, 8), 25_059_816, 78.14, 93.86, 4.2,
                "res2net50_14w_8s-6527dddc.pth"),
    ModelConfig("res2net50_26w_6s", Res2Net, _v1(_L50, 26, 6), 37_051_448, 78.58, 94.13, 6.3,
                "res2net50_26w_6s-19041792.pth"),
    ModelConfig("res2net50_26w_8s", Res2Net, _v1(_L50, 26, 8), 48_403_776, 79.20, 94.37, 8.3,
                "res2net50_26w_8s-2c7c9f12.pth"),
    ModelConfig("res2net101_26w_4s", Res2Net, _v1(_L101, 26, 4), 45_206_688, 79.19, 94.43, 8.1,
                "res2net101_26w_4s-02a759a1.pth", aliases=("res2net101",)),
    ModelConfig("res2net152_26w_4s", Res2Net, _v1(_L152, 26, 4), 61_275_248,
                aliases=("res2net152",)),
    ModelConfig("res2net50_v1b_26w_4s", Res2Net, _v1b(_L50), 25_718_352, 80.27, 95.04, 4.5,
                "res2net50_v1b_26w_4s-3cf99910.pth", aliases=("res2net50_v1b", "res2net50d"),
                **_DEEP),
    ModelConfig("res2net101_v1b_26w_4s", Res2Net, _v1b(_L101), 45_225_920, 81.23, 95.36, 8.3,
                "res2net101_v1b_26w_4s-0812c246.pth",
                aliases=("res2net101_v1b", "res2net101d"), **_DEEP),
    ModelConfig("res2net152_v1b_26w_4s", Res2Net, _v1b(_L152), 61_294_480,
                aliases=("res2net152_v1b",), extra=dict(weights_note="(SharePoint only)"),
                **_DEEP),
    ModelConfig("res2next50", Res2Net, dict(layers=_L50, base_width=4, scale=4, cardinality=8),
                24_671_464, 78.24, 93.91, 4.2, "res2next50_4s-6ef7e7bf.pth"),
    ModelConfig("res2net_dla60", DLA, dict(base_width=28, scale=4), 21_145_544, 78.47, 94.20,
                4.2, "res2net_dla60_4s-d88db7f9.pth", first_conv="base_layer.0.weight",
                conv_classifier=True),
    ModelConfig("res2next_dla60", DLA, dict(base_width=4, scale=4, cardinality=8), 17_330_456,
                78.45, 94.14, 3.6, "res2next_dla60_4s-d327927b.pth",
                first_conv="base_layer.0.weight", conv_classifier=True),
]

# GMACs at 224 px counted by ``python -m res2net_ms.summary NAME`` (tests/test_summary.py
# recounts them, slow); kept here as data so that the README table needs no counting.
_COUNTED_GMACS = {
    "res2net50_26w_4s": 4.26, "res2net50_48w_2s": 4.16, "res2net50_14w_8s": 4.18,
    "res2net50_26w_6s": 6.30, "res2net50_26w_8s": 8.34, "res2net101_26w_4s": 8.07,
    "res2net152_26w_4s": 11.88, "res2net50_v1b_26w_4s": 4.49, "res2net101_v1b_26w_4s": 8.31,
    "res2net152_v1b_26w_4s": 12.12, "res2next50": 4.17, "res2net_dla60": 4.12,
    "res2next_dla60": 3.46,
}
_CONFIGS = [replace(cfg, counted_gmacs=_COUNTED_GMACS[cfg.name]) for cfg in _CONFIGS]

MODELS = {cfg.name: cfg for cfg in _CONFIGS}
ALIASES = {alias: cfg.name for cfg in _CONFIGS for alias in cfg.aliases}


def list_models(pattern=None, aliases=False):
    """Sorted model names (with ``aliases=True`` their aliases too), filtered by a glob."""
    names = sorted(MODELS) + (sorted(ALIASES) if aliases else [])
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def get_model_config(name):
    """The :class:`ModelConfig` of a model name or alias; ValueError naming close names."""
    key = name.lower() if isinstance(name, str) else name
    key = ALIASES.get(key, key)
    if key not in MODELS:
        known = list(MODELS) + list(ALIASES)
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see res2net_ms.list_models()"
        raise ValueError(f"unknown model '{name}': {hint}")
    return MODELS[key]


def build_network(cfg, **kwargs):
    """The network of ``cfg`` without weights: its own arguments, overridden by ``kwargs``."""
    net = cfg.arch(**dict(cfg.kwargs, **kwargs))
    net.default_cfg = cfg
    return net
