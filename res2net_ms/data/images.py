"""Finding the images that cannot be decoded, and checking a whole data folder before a run.

The training pipeline decodes in MindSpore's C++ operators, which fail with a long error that
does not name the file; these functions decode with Pillow to say which file is at fault.
"""
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageOps

from .folder import IMAGE_EXTENSIONS, DataError, check_imagefolder

__all__ = ["ImageError", "read_rgb", "image_problem", "bad_images", "check_data_dir"]


class ImageError(ValueError):
    """A file that does not decode as an image; the message names it, on one line."""


def read_rgb(path, exif_transpose=False):
    """The image at ``path`` as an RGB PIL image (turned upright as its EXIF orientation
    says with ``exif_transpose``, as OpenCV reads it); :class:`ImageError` if it is none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image) if exif_transpose else image
                return image.convert("RGB")
    except Exception as exc:  # Pillow raises many types for corrupt or foreign files
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ImageError(f"{path}: not a readable image ({reason})") from None


def image_problem(path):
    """Why ``path`` cannot be decoded as an image, or None if it can."""
    try:
        read_rgb(path)
    except ImageError as exc:
        return str(exc).split("not a readable image (", 1)[1][:-1]
    return None


def bad_images(paths, workers=None):
    """``[(path, problem)]`` for every path that does not decode, in the order given.

    Pillow releases the GIL while decoding, so threads decode in parallel.
    """
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(image_problem, paths))
    return [(p, why) for p, why in zip(paths, problems) if why]


def _stray_files(data_dir, splits):
    """Files the loader ignores: not an image extension, or not inside a class folder."""
    stray = []
    for split in splits:
        split_dir = os.path.join(data_dir, split)
        if not os.path.isdir(split_dir):
            continue
        for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
            if entry.is_file():
                stray.append((entry.path, "not inside a class folder: ignored"))
            elif entry.is_dir():
                for inner in sorted(os.scandir(entry.path), key=lambda e: e.name):
                    ext = os.path.splitext(inner.name)[1].lower()
                    if inner.is_file() and ext not in IMAGE_EXTENSIONS:
                        stray.append((inner.path, "not an image extension "
                                                  f"({'/'.join(IMAGE_EXTENSIONS)}): ignored"))
    return stray


def check_data_dir(data_dir, splits=("train", "val"), workers=None):
    """Everything wrong with a data folder: layout problems, then undecodable images.

    Returns ``{"errors": [line], "bad": [(path, problem)], "ignored": [(path, why)],
    "images": n, "seconds": s}``; ``errors`` and ``bad`` stop a training run, ``ignored``
    files do not.
    """
    start = time.perf_counter()
    present = [s for s in splits if os.path.isdir(os.path.join(data_dir, s))]
    errors = []
    if not os.path.isdir(data_dir):
        return {"errors": [f"data_dir '{data_dir}' does not exist or is not a folder"],
                "bad": [], "ignored": [], "images": 0, "seconds": 0.0}
    for split in splits:
        if split not in present:
            errors.append(f"split folder '{os.path.join(data_dir, split)}' is missing")
    samples = []
    for split in present:
        try:
            info = check_imagefolder(data_dir, splits=(split,))
            samples += [path for path, _ in info["samples"][split]]
        except DataError as exc:
            errors.append(str(exc))
    if len(present) > 1 and not errors:
        try:
            check_imagefolder(data_dir, splits=tuple(present))
        except DataError as exc:
            errors.append(str(exc))
    bad = bad_images(samples, workers)
    return {"errors": errors, "bad": bad, "ignored": _stray_files(data_dir, present),
            "images": len(samples), "seconds": time.perf_counter() - start}
