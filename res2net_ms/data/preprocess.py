"""The input a model expects, derived once from its config and the options given (as timm's
``resolve_data_config``), and the evaluation preprocessing that follows from it."""
import math
from dataclasses import dataclass

import numpy as np
from mindcv.data import create_transforms
from mindspore.dataset import vision

from ..models import get_model_config

__all__ = ["Preprocess"]


@dataclass
class Preprocess:
    """Evaluation preprocessing: resize the short side to ``image_size / crop_pct``, centre
    crop ``image_size``, normalise with ``mean``/``std`` (0-255 scale), as validation does."""

    image_size: int
    crop_pct: float
    mean: tuple
    std: tuple
    interpolation: str = "bilinear"

    @classmethod
    def of_model(cls, model, image_size=None, crop_pct=None, interpolation=None, mean=None,
                 std=None):
        """The values given, the rest from ``model``'s config (a name or a ``ModelConfig``):
        the one place where the model's mean/std (0-1) become the pipeline's 0-255 values."""
        cfg = get_model_config(model) if isinstance(model, str) else model

        def given(value, default):
            return default if value is None else value

        return cls(int(given(image_size, cfg.input_size[-1])),
                   float(given(crop_pct, cfg.crop_pct)),
                   tuple(given(mean, [round(m * 255, 4) for m in cfg.mean])),
                   tuple(given(std, [round(s * 255, 4) for s in cfg.std])),
                   given(interpolation, cfg.interpolation))

    def transforms(self, decode=False):
        """mindcv's evaluation transforms; without ``decode`` they take decoded images
        (Pillow's: it names the file it fails on and gives the same pixels for JPEG and PNG)."""
        ops = create_transforms("", image_resize=self.image_size, is_training=False,
                                crop_pct=self.crop_pct, interpolation=self.interpolation,
                                mean=list(self.mean), std=list(self.std))
        return ops if decode else [t for t in ops if not isinstance(t, vision.Decode)]

    def __call__(self, image):
        """A PIL RGB image as the network's (3, image_size, image_size) float32 input."""
        array = np.asarray(image, dtype=np.uint8)
        for transform in self.transforms():
            array = transform(array)
        return np.ascontiguousarray(array, dtype=np.float32)

    def crop_box(self, width, height):
        """``(left, top, right, bottom)`` of the original image that the crop shows."""
        scale = math.floor(self.image_size / self.crop_pct) / min(width, height)
        side = self.image_size / scale
        left, top = (width - side) / 2, (height - side) / 2
        return left, top, left + side, top + side
