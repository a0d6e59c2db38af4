"""COCO's formats: annotation files read with one clear error for what is wrong in them, the
label -> category id mapping, and detections as COCO result records (what ``detect --out``
writes and COCO's evaluation server reads).

pycocotools does the RLE encoding and the evaluation; it is imported when first needed, so
that detection without COCO files does not need it (``pip install 'res2net_ms[det]'``).
"""
import contextlib
import io
import json
import numbers
import os

import numpy as np

from ..data import ImageError, bad_images
from .preprocess import image_size
from .registry import coco_classes

__all__ = ["COCO_CATEGORY_IDS", "load_pycocotools", "read_annotations", "coco_from_dict",
           "category_ids", "to_coco_results", "image_paths", "check_images"]

# The ids of COCO's 80 classes in mmdetection's label order: 2017 lists 91 ids, but 11 of
# them (street sign, hat, shoe, ...) were never annotated.
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91)
                          if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


def load_pycocotools():
    """The pycocotools modules ``(coco, cocoeval, mask)``; one clear line if it is missing."""
    try:
        from pycocotools import coco, cocoeval, mask
    except ImportError:
        raise ImportError("COCO results and evaluation need pycocotools: pip install "
                          "'res2net_ms[det]' (or pip install pycocotools)") from None
    return coco, cocoeval, mask


def read_annotations(path):
    """A pycocotools ``COCO`` of the annotation file at ``path``, checked first: ValueError
    (one line naming the file and the entry) for what pycocotools would fail on later with a
    bare ``KeyError``, or evaluate wrongly (duplicate ids)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: '{path}'")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"'{path}' is not a COCO annotation file: not JSON ({exc})") from None
    return coco_from_dict(data, source=path)


def coco_from_dict(data, source="the annotations"):
    """A pycocotools ``COCO`` of an annotation dict (checked as :func:`read_annotations`)."""
    _check_dataset(data, source)
    coco_module, _, _ = load_pycocotools()
    coco = coco_module.COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # "creating index..." chatter
        coco.createIndex()
    return coco


_REQUIRED = {
    "images": {"id": "an integer", "file_name": "a string", "height": "a positive integer",
               "width": "a positive integer"},
    "categories": {"id": "an integer", "name": "a string"},
    "annotations": {"id": "an integer", "image_id": "an image's id",
                    "category_id": "a category's id", "bbox": "[x, y, w, h]",
                    "area": "a number", "iscrowd": "0 or 1"},
}


def _check_dataset(data, source):
    def bad(what):
        return ValueError(f"'{source}' is not a usable COCO annotation file: {what}")

    if not isinstance(data, dict):
        raise bad(f"expected a JSON object, got {type(data).__name__}")
    ids = {}
    for section, fields in _REQUIRED.items():
        entries = data.get(section)
        if not isinstance(entries, list):
            raise bad(f"no '{section}' list")
        for index, entry in enumerate(entries):
            where = f"{section}[{index}]"
            if not isinstance(entry, dict):
                raise bad(f"{where} is not an object")
            for field, meaning in fields.items():
                if field not in entry:
                    raise bad(f"{where} has no '{field}' ({meaning})")
                if not _valid(field, entry[field], ids):
                    raise bad(f"{where}: '{field}' must be {meaning}, got "
                              f"{repr(entry[field])[:60]}")
            if "segmentation" in entry and not _valid_segmentation(entry["segmentation"]):
                raise bad(f"{where}: 'segmentation' must be polygons [[x, y, ...]] or RLE "
                          f"{{'size': [h, w], 'counts': ...}}")
        repeated = _first_repeat(entry["id"] for entry in entries)
        if repeated is not None:
            raise bad(f"two {section} have the id {repeated!r}")
        ids[section] = {entry["id"] for entry in entries}
    repeated = _first_repeat([c["name"] for c in data["categories"]])
    if repeated is not None:
        raise bad(f"two categories are named '{repeated}'")


def _valid(field, value, ids):
    if field in ("height", "width"):
        return _is_int(value) and value > 0
    if field == "image_id":
        return _is_int(value) and value in ids["images"]
    if field == "category_id":
        return _is_int(value) and value in ids["categories"]
    if field in ("file_name", "name"):
        return isinstance(value, str) and bool(value)
    if field == "bbox":
        return (isinstance(value, list) and len(value) == 4
                and all(_is_number(v) for v in value))
    if field == "area":
        return _is_number(value)
    if field == "iscrowd":
        return value in (0, 1)
    return _is_int(value)


def _valid_segmentation(segm):
    if isinstance(segm, dict):
        size = segm.get("size")
        return (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)
                and isinstance(segm.get("counts"), (str, list)))
    return isinstance(segm, list) and bool(segm) and all(
        isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
        and all(_is_number(v) for v in p) for p in segm)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _first_repeat(values):
    seen = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


def category_ids(class_names, categories=None):
    """The category id of each label (``ids[label]``).

    With ``categories`` (an annotation file's list), the id of the category of the same name,
    as mmdetection's ``CocoMetric`` maps them, but in the label order whatever the file's order
    (ValueError naming the class names it lacks). Without: COCO's ids for COCO's 80 classes,
    otherwise 1..N.
    """
    class_names = tuple(class_names)
    if categories is None:
        if class_names == coco_classes():
            return COCO_CATEGORY_IDS
        return tuple(range(1, len(class_names) + 1))
    by_name = {c["name"]: c["id"] for c in categories}
    missing = [name for name in class_names if name not in by_name]
    if missing:
        shown = ", ".join(f"'{n}'" for n in missing[:5]) + (", ..." if len(missing) > 5 else "")
        known = ", ".join(f"'{n}'" for n in list(by_name)[:5]) + (
            ", ..." if len(by_name) > 5 else "")
        raise ValueError(f"{len(missing)} of the detector's {len(class_names)} classes are not "
                         f"categories of the annotations: {shown} (categories: {known}); "
                         f"evaluate with a detector of the annotations' classes")
    return tuple(by_name[name] for name in class_names)


def to_coco_results(detections, image_ids, category_ids, image_sizes=None):
    """COCO result records of each image's detections, ready for ``json.dump``.

    Args:
        detections: per image, a ``Detections`` (``boxes`` x1, y1, x2, y2, ``scores``,
            ``labels`` and, for mask models, ``masks`` (M, H, W) bool).
        image_ids: the COCO image id of each.
        category_ids: the category id of each label (:func:`category_ids`).
        image_sizes: optionally the (height, width) of each image, checked against the masks.

    Each record holds ``image_id``, ``category_id``, ``bbox`` (x, y, w, h as mmdetection's
    ``xyxy2xywh`` computes them from the float32 boxes), ``score`` and, with masks,
    ``segmentation`` (RLE from pycocotools, ``counts`` as str).
    """
    detections, image_ids = list(detections), list(image_ids)
    if len(detections) != len(image_ids):
        raise ValueError(f"{len(detections)} detection results for {len(image_ids)} image ids")
    sizes = [None] * len(image_ids) if image_sizes is None else list(image_sizes)
    records = []
    for dets, image_id, size in zip(detections, image_ids, sizes):
        boxes = np.asarray(dets["boxes"], np.float32).reshape(-1, 4).tolist()
        scores = np.asarray(dets["scores"], np.float32).tolist()
        labels = np.asarray(dets["labels"]).tolist()
        bad = [label for label in labels if not 0 <= label < len(category_ids)]
        if bad:
            raise ValueError(f"image {image_id!r}: label {bad[0]} has no category id (the "
                             f"detector has {len(category_ids)} classes)")
        masks = _encode_masks(dets["masks"], image_id, len(boxes), size) if (
            "masks" in dets) else None
        for i, ((x1, y1, x2, y2), score, label) in enumerate(zip(boxes, scores, labels)):
            record = {"image_id": image_id, "category_id": category_ids[label],
                      "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            if masks is not None:
                record["segmentation"] = masks[i]
            records.append(record)
    return records


def _encode_masks(masks, image_id, count, size):
    """RLEs of (M, H, W) masks, ``counts`` as str (JSON)."""
    masks = np.asarray(masks, bool)
    if masks.ndim != 3 or len(masks) != count:
        raise ValueError(f"image {image_id!r}: expected {count} masks (M, H, W), got shape "
                         f"{masks.shape}")
    if size is not None and tuple(masks.shape[1:]) != tuple(size):
        raise ValueError(f"image {image_id!r}: masks are {masks.shape[1]}x{masks.shape[2]} "
                         f"(HxW) but the image is {size[0]}x{size[1]}")
    if count == 0:
        return []
    _, _, mask_api = load_pycocotools()
    rles = mask_api.encode(np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def image_paths(coco, folder):
    """The path of each annotated image (``file_name`` in ``folder``), in the annotation's
    order; FileNotFoundError naming the first missing one and how many are."""
    paths = [os.path.join(folder, image["file_name"]) for image in coco.dataset["images"]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(paths)} annotated images are not "
                                f"in '{folder}', e.g. '{missing[0]}': give the folder of the "
                                f"annotation's file_name entries")
    return paths


def check_images(coco, paths):
    """Every image decodes and has the annotation's size (upright, as its EXIF says), checked
    before the detector runs: masks and boxes of another size would not line up."""
    for path, problem in bad_images(paths)[:1]:
        raise ImageError(f"{path}: not a readable image ({problem})")
    for image, path in zip(coco.dataset["images"], paths):
        height, width = image_size(path)
        if (height, width) != (image["height"], image["width"]):
            raise ValueError(f"{path}: the image is {width}x{height} (upright, as its EXIF "
                             f"says) but the annotations say {image['width']}x"
                             f"{image['height']}; use the images the annotations are for")
