"""ImageFolder layout: one scan of ``data_dir/<split>/<class>/<image>`` with one clear error
per problem, and the digits demo data set.

The scan is done once per run; the loaders read their samples from it instead of rescanning
the folder every epoch (1.28 M files on ImageNet).
"""
import os

import numpy as np

from ..fileio import atomic_write

__all__ = ["DataError", "IMAGE_EXTENSIONS", "check_imagefolder", "write_digits_imagefolder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """The data directory cannot be used as configured; raised before anything compiles."""


def _is_image(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _class_folders(split_dir):
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def _images(folder):
    return sorted(e.path for e in os.scandir(folder) if e.is_file() and _is_image(e.name))


def check_imagefolder(data_dir, num_classes=None, splits=("train", "val")):
    """Check ``data_dir/<split>/<class>/<image>``; return the classes and samples.

    Raises :class:`DataError` for: no data_dir, a missing split, a split without class
    folders, a class folder without images, class folders that differ between the splits and
    a ``num_classes`` that differs from the number of class folders.

    Returns:
        ``{"classes": [...], "counts": {split: images}, "samples": {split: [(path, label)]}}``
        with the samples in class order, then file-name order.
    """
    if not data_dir:
        raise DataError("data_dir is not set: pass --data_dir or set data_dir in the config")
    if not os.path.isdir(data_dir):
        raise DataError(f"data_dir '{data_dir}' does not exist or is not a folder")
    classes, counts, samples = {}, {}, {}
    for split in splits:
        split_dir = os.path.join(data_dir, split)
        if not os.path.isdir(split_dir):
            present = sorted(e.name for e in os.scandir(data_dir) if e.is_dir())
            raise DataError(f"split folder '{split_dir}' is missing: data_dir must hold "
                            f"{' and '.join(s + '/' for s in splits)} with one folder per class "
                            f"(found: {', '.join(present) or 'nothing'})")
        names = _class_folders(split_dir)
        if not names:
            raise DataError(f"'{split_dir}' has no class folders: put the images of each "
                            f"class in a folder of their own")
        per_class = {n: _images(os.path.join(split_dir, n)) for n in names}
        empty = [n for n, files in per_class.items() if not files]
        if empty:
            shown = ", ".join(os.path.join(split_dir, n) for n in empty[:3])
            more = f" and {len(empty) - 3} more" if len(empty) > 3 else ""
            raise DataError(f"empty class folder: {shown}{more} has no images "
                            f"({'/'.join(IMAGE_EXTENSIONS)})")
        classes[split] = names
        samples[split] = [(path, label) for label, n in enumerate(names) for path in per_class[n]]
        counts[split] = len(samples[split])
    first = splits[0]
    for split in splits[1:]:
        if classes[split] != classes[first]:
            only_a = sorted(set(classes[first]) - set(classes[split]))
            only_b = sorted(set(classes[split]) - set(classes[first]))
            raise DataError(f"class folders differ between {first}/ and {split}/ in "
                            f"'{data_dir}': only in {first}/: {_short(only_a)}; only in "
                            f"{split}/: {_short(only_b)}")
    found = classes[first]
    if num_classes is not None and num_classes != len(found):
        raise DataError(f"num_classes is {num_classes} but '{data_dir}' has {len(found)} class "
                        f"folders ({_short(found)}): set num_classes: {len(found)}")
    return {"classes": found, "counts": counts, "samples": samples}


def _short(names, limit=5):
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def write_digits_imagefolder(root, val_fraction=0.2, seed=0, size=32):
    """Write scikit-learn's 8x8 digits as an ImageFolder of RGB PNGs (classes ``0``..``9``).

    The split is stratified and fixed by ``seed``; images are upscaled to ``size`` pixels.
    Nothing is written when ``root`` already holds both splits; otherwise the folder is built
    beside ``root`` and renamed into place (:func:`~res2net_ms.fileio.atomic_write`), so an
    interrupted run never leaves half a data set.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if all(os.path.isdir(os.path.join(root, s)) for s in ("train", "val")):
        return root
    digits = load_digits()
    indices = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(indices, test_size=val_fraction, random_state=seed,
                                          stratify=digits.target)

    def write(tmp):
        for split, idx in (("train", train_idx), ("val", val_idx)):
            for label in range(10):
                os.makedirs(os.path.join(tmp, split, str(label)), exist_ok=True)
            for i in sorted(idx):
                pixels = np.clip(digits.images[i] * (255.0 / 16.0), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels, mode="L").resize((size, size), Image.BILINEAR)
                image.convert("RGB").save(
                    os.path.join(tmp, split, str(digits.target[i]), f"{i:04d}.png"))

    return atomic_write(root, write)
