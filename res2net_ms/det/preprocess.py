"""mmdetection's test-time preprocessing: keep-ratio resize to fit (1333, 800) with OpenCV's
bilinear interpolation, normalisation with the ImageNet mean and std (0-255 RGB), zero padding
of a batch to a multiple of 32 of its largest image. Boxes go back to the input image by
dividing by the scale factors.

The resize is MindSpore's own ``dataset.vision.Resize`` (OpenCV inside), which gives exactly
``cv2.resize(..., INTER_LINEAR)`` as mmdetection calls it.
"""
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from mindspore.dataset import vision
from PIL import Image

from ..data import read_rgb

__all__ = ["MEAN", "STD", "ImageMeta", "DetDataPreprocessor", "rescale_size",
           "resize_keep_ratio", "preprocess", "to_rgb_uint8", "load_image",
           "image_size"]

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ImageMeta:
    """Shapes of one image through preprocessing, all (height, width).

    ``img_shape`` is the resized image (boxes are clipped to it), ``pad_shape`` the network
    input; ``scale_factor`` is (width, height) resized / input.
    """

    ori_shape: tuple
    img_shape: tuple
    pad_shape: tuple
    scale_factor: tuple


def to_rgb_uint8(image):
    """An (H, W, 3) uint8 RGB array from an RGB(A) or grey uint8 array; ValueError otherwise."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (0-255 RGB), got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    return np.ascontiguousarray(image[:, :, :3])


def rescale_size(width, height, scale=(1333, 800)):
    """mmcv's ``rescale_size``: the largest size of the same ratio within ``scale``."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def resize_keep_ratio(image, scale=(1333, 800)):
    """The resized image and its (width, height) scale factors, as mmdetection's ``Resize``."""
    height, width = image.shape[:2]
    new_w, new_h = rescale_size(width, height, scale)
    if min(new_w, new_h) < 1:
        raise ValueError(f"image of {width}x{height} pixels is too thin to resize to {scale}")
    resized = vision.Resize((new_h, new_w), vision.Inter.LINEAR)(image)
    return resized, (new_w / width, new_h / height)


def preprocess(image, scale=(1333, 800), mean=MEAN, std=STD, size_divisor=32):
    """Network input (1, 3, H', W') and :class:`ImageMeta` of an RGB uint8 image."""
    batch, metas = DetDataPreprocessor(scale, mean, std, size_divisor).collate([image])
    return batch, metas[0]


def _padded(size, divisor):
    return -(-size // divisor) * divisor


@dataclass(frozen=True)
class DetDataPreprocessor:
    """The one home of the detector's input settings: mmdetection's test ``Resize`` (keep
    ratio, fit ``scale`` = (long, short)) and ``DetDataPreprocessor`` (mean, std, zero
    padding to ``pad_size_divisor``).

    Batches hold images of one padded size only (:meth:`plan`), so that every image is padded
    exactly as it would be alone: a batch gives the same detections as one image at a time,
    and each padded size compiles the network once whatever the batch's images.
    """

    scale: tuple = (1333, 800)
    mean: tuple = MEAN
    std: tuple = STD
    pad_size_divisor: int = 32

    def padded_shape(self, height, width):
        """The network input's (H, W) for an image of ``height`` x ``width`` pixels."""
        new_w, new_h = rescale_size(width, height, self.scale)
        return _padded(new_h, self.pad_size_divisor), _padded(new_w, self.pad_size_divisor)

    def plan(self, sizes, batch_size=1):
        """Batches (lists of indices into ``sizes``, the images' (H, W)) of at most
        ``batch_size`` images sharing one padded shape, in order of first appearance."""
        groups = OrderedDict()
        for index, (height, width) in enumerate(sizes):
            key = self.padded_shape(height, width) if min(height, width) > 0 else None
            groups.setdefault(key, []).append(index)
        return [members[i:i + batch_size] for members in groups.values()
                for i in range(0, len(members), batch_size)]

    def train_canvas(self, sizes):
        """The fixed (H, W) a training batch of images of ``sizes`` (H, W) is padded to,
        whatever their sizes, so that the training graph compiles once per orientation: the
        padded ``scale`` laid as the images lie (landscape or portrait), square when a batch
        mixes them."""
        long_side = _padded(max(self.scale), self.pad_size_divisor)
        short_side = _padded(min(self.scale), self.pad_size_divisor)
        if all(width >= height for height, width in sizes):
            return short_side, long_side
        if all(height > width for height, width in sizes):
            return long_side, short_side
        return long_side, long_side

    def normalize(self, small):
        """The network's (3, h, w) float32 of a resized RGB uint8 image (h, w, 3)."""
        x = (small.astype(np.float32) - np.float32(self.mean)) / np.float32(self.std)
        return x.transpose(2, 0, 1)

    def collate(self, images, batch_size=None):
        """Network input (B, 3, H, W) of RGB uint8 ``images``, padded to the largest and to
        ``batch_size`` images (blank ones after the real ones), and each image's
        :class:`ImageMeta`."""
        resized = [resize_keep_ratio(image, self.scale) for image in images]
        height = _padded(max(r.shape[0] for r, _ in resized), self.pad_size_divisor)
        width = _padded(max(r.shape[1] for r, _ in resized), self.pad_size_divisor)
        batch = np.zeros((max(batch_size or 0, len(images)), 3, height, width), np.float32)
        metas = []
        for k, (image, (small, factor)) in enumerate(zip(images, resized)):
            batch[k, :, :small.shape[0], :small.shape[1]] = self.normalize(small)
            metas.append(ImageMeta(tuple(image.shape[:2]), tuple(small.shape[:2]),
                                   (height, width), factor))
        return batch, metas


def image_size(image):
    """(H, W) of an RGB array, a PIL image or an image file (read from its header, turned as
    its EXIF orientation says), without decoding a file."""
    if isinstance(image, np.ndarray):
        return tuple(image.shape[:2])
    if isinstance(image, Image.Image):
        return image.height, image.width
    try:
        with Image.open(image) as opened:
            width, height = opened.size
            turned = opened.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # unreadable: load_image names the problem
        return 0, 0
    return (width, height) if turned else (height, width)


def load_image(image):
    """An (H, W, 3) RGB uint8 array from an array, a PIL image or an image file (turned
    upright as its EXIF orientation says, as OpenCV reads it)."""
    if isinstance(image, (str, os.PathLike)):
        image = read_rgb(image, exif_transpose=True)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    return to_rgb_uint8(image)
