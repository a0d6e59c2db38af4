"""mmdetection's test-time preprocessing: keep-ratio resize to fit (1333, 800) with OpenCV's
bilinear interpolation, normalisation with the ImageNet mean and std (0-255 RGB), zero padding
to a multiple of 32. Boxes go back to the input image by dividing by the scale factors.

The resize is MindSpore's own ``dataset.vision.Resize`` (OpenCV inside), which gives exactly
``cv2.resize(..., INTER_LINEAR)`` as mmdetection calls it.
"""
from dataclasses import dataclass

import numpy as np
from mindspore.dataset import vision

__all__ = ["MEAN", "STD", "ImageMeta", "rescale_size", "resize_keep_ratio", "normalize_pad",
           "preprocess", "to_rgb_uint8"]

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


def normalize_pad(image, mean=MEAN, std=STD, size_divisor=32):
    """(1, 3, H', W') float32: ``(image - mean) / std``, zero-padded to multiples of
    ``size_divisor`` (the padding is zero after normalisation, as mmdetection's)."""
    x = (image.astype(np.float32) - np.float32(mean)) / np.float32(std)
    height, width = x.shape[:2]
    pad_h = -(-height // size_divisor) * size_divisor
    pad_w = -(-width // size_divisor) * size_divisor
    batch = np.zeros((1, 3, pad_h, pad_w), np.float32)
    batch[0, :, :height, :width] = x.transpose(2, 0, 1)
    return batch


def preprocess(image, scale=(1333, 800), mean=MEAN, std=STD, size_divisor=32):
    """Network input (1, 3, H', W') and :class:`ImageMeta` of an RGB uint8 image."""
    resized, scale_factor = resize_keep_ratio(image, scale)
    batch = normalize_pad(resized, mean, std, size_divisor)
    return batch, ImageMeta(tuple(image.shape[:2]), tuple(resized.shape[:2]),
                            tuple(batch.shape[2:]), scale_factor)
