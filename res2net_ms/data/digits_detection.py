"""A small, real detection set in COCO's format: scikit-learn's handwritten digits placed on
canvases, each with its box and pixel mask (what ``make demo-det`` trains on).

The digits of the training canvases come from the classification demo's training split and
those of the held-out canvases from its validation split
(:func:`~.folder.write_digits_imagefolder`, the same seed), so that a detector whose backbone
is the classification demo's network has never seen a held-out digit.
"""
import json
import os

import numpy as np

from ..fileio import atomic_write

__all__ = ["write_digits_detection_set", "DIGIT_NAMES"]

DIGIT_NAMES = tuple(str(d) for d in range(10))


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE of a bool mask: run lengths in column-major order, zeros
    first (readable by pycocotools and mmdetection without pycocotools to write it)."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs.tolist()}


def _place(rng, taken, side, size):
    """A free square of ``side`` pixels on a ``size`` canvas (overlapping no taken square),
    or None."""
    for _ in range(50):
        x, y = rng.randint(0, size - side + 1), rng.randint(0, size - side + 1)
        if all(x + side <= bx or bx + bs <= x or y + side <= by or by + bs <= y
               for bx, by, bs in taken):
            return x, y
    return None


def _canvases(pixels, targets, count, rng, size, sides, per_canvas):
    """``count`` canvases (uint8, size x size) and, per canvas, its objects
    ``(label, x, y, w, h, mask)``."""
    from PIL import Image

    for _ in range(count):
        canvas = rng.randint(0, 40, (size, size)).astype(np.uint8)
        objects, taken = [], []
        for _ in range(rng.randint(per_canvas[0], per_canvas[1] + 1)):
            side = int(rng.randint(sides[0], sides[1] + 1))
            spot = _place(rng, taken, side, size)
            if spot is None:
                continue
            x, y = spot
            index = rng.randint(len(targets))
            digit = Image.fromarray(pixels[index]).resize((side, side), Image.BILINEAR)
            digit = np.asarray(digit)
            region = canvas[y:y + side, x:x + side]
            np.maximum(region, digit, out=region)
            mask = np.zeros((size, size), bool)
            mask[y:y + side, x:x + side] = digit > 100
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue
            taken.append((x, y, side))
            x0, y0 = int(xs.min()), int(ys.min())
            objects.append((int(targets[index]), x0, y0, int(xs.max()) + 1 - x0,
                            int(ys.max()) + 1 - y0, mask))
        yield canvas, objects


def write_digits_detection_set(root, train_images=600, val_images=150, size=128,
                               sides=(20, 48), per_canvas=(2, 5), val_fraction=0.2, seed=0):
    """Write ``root/{train,val}/*.png`` and ``root/annotations/instances_{train,val}.json`` (COCO
    instances: boxes tight around each digit's strokes, masks as RLE, categories "0".."9").

    Nothing is written when ``root`` already holds both annotation files; otherwise the set
    is built beside ``root`` and renamed into place, so an interrupted run never leaves half
    a set. Returns ``root``.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if all(os.path.isfile(os.path.join(root, "annotations", f"instances_{s}.json"))
           for s in ("train", "val")):
        return root
    digits = load_digits()
    pixels = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    indices = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(indices, test_size=val_fraction, random_state=seed,
                                          stratify=digits.target)
    rng = np.random.RandomState(seed)

    def write(tmp):
        os.makedirs(os.path.join(tmp, "annotations"))
        for split, idx, count in (("train", train_idx, train_images),
                                  ("val", val_idx, val_images)):
            os.makedirs(os.path.join(tmp, split))
            images, annotations = [], []
            for number, (canvas, objects) in enumerate(_canvases(
                    pixels[idx], digits.target[idx], count, rng, size, sides, per_canvas)):
                name = f"{number:05d}.png"
                Image.fromarray(canvas).convert("RGB").save(os.path.join(tmp, split, name))
                images.append({"id": number + 1, "file_name": name, "height": size,
                               "width": size})
                for label, x, y, w, h, mask in objects:
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": number + 1,
                        "category_id": label + 1, "bbox": [x, y, w, h],
                        "area": float(mask.sum()), "iscrowd": 0,
                        "segmentation": _uncompressed_rle(mask)})
            categories = [{"id": d + 1, "name": name, "supercategory": "digit"}
                          for d, name in enumerate(DIGIT_NAMES)]
            with open(os.path.join(tmp, "annotations", f"instances_{split}.json"), "w") as f:
                json.dump({"images": images, "annotations": annotations,
                           "categories": categories}, f)

    return atomic_write(root, write)
