"""ImageFolder data: checks, loaders built from mindcv, and the digits demo data set.

The loaders are mindcv's ``create_dataset`` / ``create_transforms`` / ``create_loader``;
this module only decides their arguments (from the options and the model config) and adds
what mindcv lacks: up-front checks of the folder layout with one clear error each, per-epoch
seeding so that a resumed run sees the same data order, and unpadded evaluation shards.
"""
import os

import mindspore.dataset as ds
import numpy as np
from mindcv.data import create_dataset, create_loader, create_transforms

from .fileio import atomic_write

__all__ = ["DataError", "IMAGE_EXTENSIONS", "check_imagefolder", "write_digits_imagefolder",
           "build_transforms", "create_train_loader", "create_eval_loader"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# MindSpore matches extensions case-sensitively.
_MS_EXTENSIONS = sorted({e for ext in IMAGE_EXTENSIONS for e in (ext, ext.upper())})


class DataError(ValueError):
    """The data directory cannot be used as configured; raised before anything compiles."""


def _is_image(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _class_folders(split_dir):
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def _count_images(folder):
    return sum(1 for e in os.scandir(folder) if e.is_file() and _is_image(e.name))


def check_imagefolder(data_dir, num_classes=None, splits=("train", "val")):
    """Check ``data_dir/<split>/<class>/<image>``; return the classes and image counts.

    Raises :class:`DataError` for: no data_dir, a missing split, a split without class
    folders, a class folder without images, class folders that differ between the splits and
    a ``num_classes`` that differs from the number of class folders.

    Returns:
        ``{"classes": [...], "counts": {split: images}}``
    """
    if not data_dir:
        raise DataError("data_dir is not set: pass --data_dir or set data_dir in the config")
    if not os.path.isdir(data_dir):
        raise DataError(f"data_dir '{data_dir}' does not exist or is not a folder")
    classes, counts = {}, {}
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
        per_class = {n: _count_images(os.path.join(split_dir, n)) for n in names}
        empty = [n for n, c in per_class.items() if c == 0]
        if empty:
            shown = ", ".join(os.path.join(split_dir, n) for n in empty[:3])
            more = f" and {len(empty) - 3} more" if len(empty) > 3 else ""
            raise DataError(f"empty class folder: {shown}{more} has no images "
                            f"({'/'.join(IMAGE_EXTENSIONS)})")
        classes[split] = names
        counts[split] = sum(per_class.values())
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
    return {"classes": found, "counts": counts}


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


def build_transforms(args, is_training):
    """mindcv's ImageNet transforms with this run's sizes, crop, mean/std and augmentation."""
    common = dict(interpolation=args.interpolation, mean=list(args.mean), std=list(args.std))
    if not is_training:
        return create_transforms("", image_resize=args.image_resize, is_training=False,
                                 crop_pct=args.crop_pct, **common)
    return create_transforms(
        "", image_resize=args.image_resize, is_training=True, auto_augment=args.auto_augment,
        scale=tuple(args.scale), ratio=tuple(args.ratio), hflip=args.hflip, vflip=args.vflip,
        color_jitter=args.color_jitter, re_prob=args.re_prob, re_scale=tuple(args.re_scale),
        re_ratio=tuple(args.re_ratio), re_value=args.re_value, **common)


def _workers(args):
    """Workers per pipeline: MindSpore refuses more than there are CPUs."""
    if args.deterministic:
        return 1
    return max(1, min(args.num_parallel_workers, os.cpu_count() or 1))


def create_train_loader(args, epoch, rank=0, group_size=1):
    """The training batches of one epoch (0-based), sharded by rank.

    The data seed is ``seed + epoch``: every epoch draws a new order, and a run resumed at
    epoch k draws the same order as an uninterrupted run did. All ranks share the seed, so
    their shards partition the same permutation.
    """
    ds.config.set_seed(args.seed + epoch)
    workers = _workers(args)
    sharded = group_size > 1
    num_samples = args.num_samples
    if num_samples is not None and sharded:  # the sampler counts per shard; the flag is global
        num_samples = -(-num_samples // group_size)
    dataset = create_dataset(
        "", root=args.data_dir, split=args.train_split, shuffle=args.shuffle,
        num_samples=num_samples, num_shards=group_size if sharded else None,
        shard_id=rank if sharded else None, num_parallel_workers=workers,
        extensions=_MS_EXTENSIONS)
    return create_loader(
        dataset, batch_size=args.batch_size, drop_remainder=args.drop_remainder,
        is_training=True, mixup=args.mixup, cutmix=args.cutmix, cutmix_prob=args.cutmix_prob,
        num_classes=args.num_classes, transform=build_transforms(args, True),
        num_parallel_workers=workers)


def create_eval_loader(args, rank=0, group_size=1):
    """Validation batches (last batch kept, no shuffle); rank r gets images r, r+n, r+2n, ...

    MindSpore's shard sampler pads uneven shards with repeated images, which would count
    them twice; a subset sampler per rank covers every image exactly once.
    """
    workers = _workers(args)
    if group_size > 1:
        root = os.path.join(args.data_dir, args.val_split)
        total = ds.ImageFolderDataset(root, extensions=_MS_EXTENSIONS).get_dataset_size()
        dataset = ds.ImageFolderDataset(
            root, sampler=ds.SubsetSampler(list(range(rank, total, group_size))),
            num_parallel_workers=workers, extensions=_MS_EXTENSIONS)
    else:
        dataset = create_dataset("", root=args.data_dir, split=args.val_split, shuffle=False,
                                 num_parallel_workers=workers, extensions=_MS_EXTENSIONS)
    return create_loader(dataset, batch_size=args.batch_size, drop_remainder=False,
                         is_training=False, num_classes=args.num_classes,
                         transform=build_transforms(args, False), num_parallel_workers=workers)
