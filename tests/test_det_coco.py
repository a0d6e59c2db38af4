"""COCO's formats and evaluation: result records, annotation checks, the same AP as
mmdetection 3.3.0's own ``CocoMetric``, masks drawn, and ``python -m res2net_ms.det.evaluate``
end to end with a real (reduced-depth) detector.

The evaluation set is real handwriting: scikit-learn's digits placed on canvases at sizes from
small to large, each with its box and pixel mask (as polygons, compressed and uncompressed RLE),
five categories with non-contiguous ids and crowd regions. The predictions perturb the ground
truth (shifted boxes, eroded or dilated masks, wrong labels, duplicates, false positives, missed
objects, random scores, and one image with more than 100 detections) so that AP is neither 0
nor 1 and recall at 100 detections differs from recall at 300.
"""
import io
import json
import logging
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import SMALL_DETECTOR_SCALE
from res2net_ms.det import coco_classes
from res2net_ms.det.coco import (COCO_CATEGORY_IDS, category_ids, read_annotations,
                                 to_coco_results)
from res2net_ms.det.draw import MASK_ALPHA, draw_detections
from res2net_ms.det.evaluate import METRIC_NAMES, evaluate_detections, evaluate_records, main

mask_api = pytest.importorskip("pycocotools.mask")

CLASSES = ("zero", "two", "three", "five", "seven")
DIGITS = (0, 2, 3, 5, 7)
CAT_IDS = (4, 9, 10, 23, 42)  # non-contiguous, as COCO's
CANVASES = ((300, 400), (320, 320), (280, 440))
SIDES = (20, 36, 64, 100, 150, 190)  # small, medium and large objects


def _rle(mask):
    """Compressed RLE of a bool mask, counts as str."""
    rle = mask_api.encode(np.asfortranarray(mask[:, :, None], dtype=np.uint8))[0]
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE (crowd regions): run lengths in column-major order, zeros first."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    counts = ([0] if flat[0] else []) + runs.tolist()
    return {"size": list(mask.shape), "counts": counts}


def _polygons(mask):
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def _as_rle(segmentation, height, width):
    if isinstance(segmentation, list):
        return mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_api.frPyObjects(segmentation, height, width)
    return segmentation


def _annotation(segmentation, height, width, **fields):
    """An annotation whose bbox and area are those of its segmentation, as COCO's are."""
    rle = _as_rle(segmentation, height, width)
    return dict(fields, segmentation=segmentation, area=float(mask_api.area(rle)),
                bbox=[float(v) for v in mask_api.toBbox(rle)])


def _digit(sample, side):
    """A handwritten digit (8x8, 0..16) drawn ``side`` pixels wide, and its pixel mask."""
    image = Image.fromarray((sample * 15.9).astype(np.uint8)).resize((side, side),
                                                                    Image.BILINEAR)
    pixels = np.asarray(image)
    return pixels, pixels > 100


def _free(box, boxes, limit=0.1):
    x, y, w, h = box
    for bx, by, bw, bh in boxes:
        inter = max(0, min(x + w, bx + bw) - max(x, bx)) * max(0, min(y + h, by + bh) - max(y, by))
        if inter / min(w * h, bw * bh) > limit:
            return False
    return True


def make_digit_set(n_images=24, seed=0):
    """``(dataset, canvases)``: a COCO annotation dict and ``{image_id: (H, W) uint8}``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pools = [digits.images[digits.target == d] for d in DIGITS]
    rng = np.random.RandomState(seed)
    images, annotations, canvases = [], [], {}
    for index in range(n_images):
        image_id = 1000 + 7 * index  # ids that are not positions
        height, width = CANVASES[index % len(CANVASES)]
        canvas = rng.randint(0, 40, (height, width)).astype(np.uint8)
        boxes = []

        def place(label, side, x, y):
            pixels, mask = _digit(pools[label][rng.randint(len(pools[label]))], side)
            region = canvas[y:y + side, x:x + side]
            np.maximum(region, pixels, out=region)
            full = np.zeros((height, width), bool)
            full[y:y + side, x:x + side] = mask
            return full

        if index % 4 == 1:  # a crowd: a row of tiny digits of one class, one region
            label, x0, y0 = rng.randint(len(DIGITS)), rng.randint(0, width - 110), 5
            union = np.zeros((height, width), bool)
            for k in range(5):
                union |= place(label, 16, x0 + 22 * k, y0)
            boxes.append((x0, y0, 110, 16))
            annotations.append(_annotation(_uncompressed_rle(union), height, width,
                                           image_id=image_id, category_id=CAT_IDS[label],
                                           iscrowd=1))
        count = 0 if index == 5 else rng.randint(2, 7)
        for _ in range(count):
            side = int(rng.choice([s for s in SIDES if s < min(height, width) - 10]))
            for _ in range(50):
                x, y = rng.randint(0, width - side), rng.randint(0, height - side)
                if _free((x, y, side, side), boxes):
                    break
            else:
                continue
            boxes.append((x, y, side, side))
            label = rng.randint(len(DIGITS))
            mask = place(label, side, x, y)
            kind = len(annotations) % 3
            segmentation = (_polygons(mask) if kind == 0 else _rle(mask) if kind == 1
                            else _uncompressed_rle(mask))
            annotations.append(_annotation(segmentation, height, width, image_id=image_id,
                                           category_id=CAT_IDS[label], iscrowd=0))
        images.append({"id": image_id, "file_name": f"canvas{index:02d}.png",
                       "height": height, "width": width})
        canvases[image_id] = canvas
    for number, ann in enumerate(annotations, start=1):
        ann["id"] = number
    categories = [{"id": i, "name": n, "supercategory": "digit"}
                  for i, n in zip(CAT_IDS, CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}, canvases


def _shift(mask, dy, dx):
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        mask[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _erode_or_dilate(mask, grow):
    moved = [_shift(mask, dy, dx) for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    return np.logical_or.reduce([mask] + moved) if grow else np.logical_and.reduce([mask] + moved)


def perturbed_predictions(dataset, seed=1):
    """``{image_id: Detections-like dict}`` made from the ground truth, imperfectly."""
    rng = np.random.RandomState(seed)
    label_of = {c: i for i, c in enumerate(CAT_IDS)}
    predictions = {}
    for image_index, image in enumerate(dataset["images"]):
        height, width = image["height"], image["width"]
        busy = image_index == 2  # over 100 detections: recall at 100 and 300 differ
        dets = []
        for ann in (a for a in dataset["annotations"] if a["image_id"] == image["id"]):
            gt = mask_api.decode(_as_rle(ann["segmentation"], height, width)).astype(bool)
            if ann["iscrowd"]:  # detections inside a crowd are neither right nor wrong
                x, y, w, h = ann["bbox"]
                for k in range(2):
                    box = [x + 22 * k, y, x + 22 * k + 16, y + h]
                    inside = np.zeros_like(gt)
                    inside[int(y):int(y + h), int(box[0]):int(box[2])] = True
                    dets.append((box, rng.uniform(0.3, 0.9), label_of[ann["category_id"]],
                                 gt & inside))
                continue
            if rng.rand() < 0.15:
                continue  # missed
            x, y, w, h = ann["bbox"]
            dy, dx = (int(round(v)) for v in rng.normal(0, 0.04, 2) * (h, w))
            mask = _shift(gt, dy, dx)
            if w >= 60:  # thin strokes of small digits would vanish
                mask = _erode_or_dilate(mask, grow=rng.rand() < 0.5)
            sw, sh = 1 + rng.normal(0, 0.05, 2)
            box = [x + dx + rng.normal(0, 1), y + dy + rng.normal(0, 1)]
            box += [box[0] + w * sw, box[1] + h * sh]
            label = label_of[ann["category_id"]]
            if rng.rand() < 0.1:
                label = (label + rng.randint(1, len(CLASSES))) % len(CLASSES)
            score = rng.uniform(0.01, 0.09) if busy else rng.uniform(0.3, 1.0)
            dets.append((box, score, label, mask))
            if rng.rand() < 0.15:  # a duplicate, lower
                dets.append(([v + rng.normal(0, 3) for v in box], score * 0.6, label,
                             _shift(mask, 2, -2)))
        busy_label = dets[0][2] if dets else 0
        for _ in range(130 if busy else rng.poisson(2)):
            w, h = rng.randint(12, 120, 2)
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            yy, xx = np.mgrid[:height, :width]
            ellipse = (((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2) <= 1
            if busy:  # COCOeval keeps 100 per image and category: outrank the true ones
                dets.append(([x, y, x + w, y + h], rng.uniform(0.1, 0.3), busy_label, ellipse))
            else:
                dets.append(([x, y, x + w, y + h], rng.uniform(0.05, 0.7),
                             rng.randint(len(CLASSES)), ellipse))
        if image_index == 7:
            dets = []  # an image without a detection
        dets.sort(key=lambda d: -d[1])
        predictions[image["id"]] = {
            "boxes": np.array([d[0] for d in dets], np.float32).reshape(-1, 4),
            "scores": np.array([d[1] for d in dets], np.float32),
            "labels": np.array([d[2] for d in dets], np.int64),
            "names": np.array([CLASSES[d[2]] for d in dets], object),
            "masks": np.array([d[3] for d in dets], bool).reshape(-1, height, width)}
    return predictions


@pytest.fixture(scope="module")
def digit_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    dataset, canvases = make_digit_set()
    path = root / "instances.json"
    path.write_text(json.dumps(dataset))
    return {"path": path, "dataset": dataset, "canvases": canvases,
            "predictions": perturbed_predictions(dataset)}


@pytest.fixture(scope="module")
def ours(digit_set):
    return evaluate_detections(str(digit_set["path"]), digit_set["predictions"], CLASSES)


def test_the_set_is_what_the_parity_test_needs(digit_set):
    dataset, predictions = digit_set["dataset"], digit_set["predictions"]
    anns = dataset["annotations"]
    assert len(dataset["images"]) == 24 and len(anns) > 80
    assert {a["category_id"] for a in anns} == set(CAT_IDS)
    assert sum(a["iscrowd"] for a in anns) >= 5

    def kind(segm):
        return ("polygons" if isinstance(segm, list) else
                "compressed RLE" if isinstance(segm["counts"], str) else "uncompressed RLE")

    assert {kind(a["segmentation"]) for a in anns} == {
        "polygons", "compressed RLE", "uncompressed RLE"}
    areas = np.array([a["area"] for a in anns if not a["iscrowd"]])
    assert (areas < 32 ** 2).sum() >= 5 and ((areas >= 32 ** 2) & (areas < 96 ** 2)).sum() >= 5
    assert (areas >= 96 ** 2).sum() >= 5
    assert max(len(p["boxes"]) for p in predictions.values()) > 100
    assert min(len(p["boxes"]) for p in predictions.values()) == 0


def test_same_ap_as_mmdetection_coco_metric(digit_set, ours):
    torch = pytest.importorskip("torch")
    import mmdet_reference

    if mmdet_reference.import_mmdet() is None:
        pytest.skip("mmdetection is not installed (make test installs requirements-mmdet.txt)")
    from mmdet.evaluation.metrics import coco_metric
    from mmengine.logging import MMLogger

    runs = []

    class RecordedCOCOeval(coco_metric.COCOeval):
        def summarize(self):
            super().summarize()
            runs.append(self)

    metric = coco_metric.CocoMetric(ann_file=str(digit_set["path"]), metric=["bbox", "segm"])
    metric.dataset_meta = {"classes": CLASSES}
    samples = []
    for image in digit_set["dataset"]["images"]:
        pred = digit_set["predictions"][image["id"]]
        samples.append({"img_id": image["id"], "ori_shape": (image["height"], image["width"]),
                        "pred_instances": {key: torch.from_numpy(pred[key]) for key in
                                           ("boxes", "scores", "labels", "masks")}})
        samples[-1]["pred_instances"]["bboxes"] = samples[-1]["pred_instances"].pop("boxes")
    metric.process({}, samples)
    logged = io.StringIO()
    handler = logging.StreamHandler(logged)
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    printed = io.StringIO()
    original = coco_metric.COCOeval
    coco_metric.COCOeval = RecordedCOCOeval
    try:
        from contextlib import redirect_stdout
        with redirect_stdout(printed):
            theirs = metric.evaluate(len(samples))
    finally:
        coco_metric.COCOeval = original
        logger.removeHandler(handler)

    assert [r.params.iouType for r in runs] == ["bbox", "segm"]
    for evaluation, run in zip(ours, runs):
        print(evaluation.iou_type, "ours ", np.round(evaluation.stats, 4).tolist())
        print(evaluation.iou_type, "mmdet", np.round(run.stats, 4).tolist())
        assert np.array_equal(evaluation.stats, run.stats), evaluation.iou_type
        assert evaluation.summary in printed.getvalue()  # COCOeval's 12 lines, as printed
        assert evaluation.copypaste in logged.getvalue()
        for name in METRIC_NAMES[:6]:
            key = f"{evaluation.iou_type}_{name}"
            assert theirs[f"coco/{key}"] == round(evaluation.metrics()[key], 3)
        stats = evaluation.stats
        assert 0.2 < stats[0] < 0.9 and np.all((stats > 0) & (stats < 1))  # neither 0 nor 1
        assert stats[6] < stats[7]  # recall at 100 detections per image < at 300
    assert not np.array_equal(ours[0].stats, ours[1].stats)  # masks are not the boxes


def test_categories_are_mapped_by_name_in_the_label_order(digit_set, ours, tmp_path):
    dataset = json.loads(digit_set["path"].read_text())
    dataset["categories"] = dataset["categories"][::-1]  # mmdetection would mix labels up
    path = tmp_path / "reordered.json"
    path.write_text(json.dumps(dataset))
    assert category_ids(CLASSES, dataset["categories"]) == CAT_IDS
    again = evaluate_detections(str(path), digit_set["predictions"], CLASSES)
    assert [e.stats.tolist() for e in again] == [e.stats.tolist() for e in ours]
    with pytest.raises(ValueError, match="2 of the detector's 6 classes are not categories"):
        category_ids(CLASSES + ("nine",), dataset["categories"][1:])


def test_result_records_are_cocos_format(digit_set):
    image = digit_set["dataset"]["images"][0]
    pred = digit_set["predictions"][image["id"]]
    size = (image["height"], image["width"])
    records = to_coco_results([pred], [image["id"]], CAT_IDS, [size])
    assert len(records) == len(pred["boxes"]) > 0
    records = json.loads(json.dumps(records))  # JSON as it is
    for record, box, score, label, mask in zip(records, pred["boxes"], pred["scores"],
                                               pred["labels"], pred["masks"]):
        assert record["image_id"] == image["id"]
        assert record["category_id"] == CAT_IDS[label]
        x1, y1, x2, y2 = box.tolist()
        assert record["bbox"] == [x1, y1, x2 - x1, y2 - y1]
        assert record["score"] == float(score)
        rle = record["segmentation"]
        assert isinstance(rle["counts"], str) and rle["size"] == list(size)
        assert np.array_equal(mask_api.decode(rle).astype(bool), mask)
    boxes_only = {k: v for k, v in pred.items() if k != "masks"}
    assert "segmentation" not in to_coco_results([boxes_only], [1], CAT_IDS)[0]
    with pytest.raises(ValueError, match="label 5 has no category id"):
        to_coco_results([dict(boxes_only, labels=pred["labels"] * 0 + 5)], [1], CAT_IDS)
    with pytest.raises(ValueError, match=r"masks are 300x400 \(HxW\) but the image is 400x300"):
        to_coco_results([pred], [image["id"]], CAT_IDS, [(400, 300)])


def test_coco_category_ids_without_annotations():
    from torchvision.models._meta import _COCO_CATEGORIES  # COCO's 91 ids, by position

    ids = category_ids(coco_classes())
    assert ids == COCO_CATEGORY_IDS and len(set(ids)) == 80
    assert [_COCO_CATEGORIES[i] for i in ids] == list(coco_classes())
    assert category_ids(CLASSES) == (1, 2, 3, 4, 5)


def test_no_detection_scores_zero_not_an_error(digit_set):
    bbox, = evaluate_detections(str(digit_set["path"]), {}, CLASSES)
    assert bbox.stats.tolist() == [0.0] * 12


def test_mask_ap_needs_masks(digit_set):
    boxes_only = {i: {k: v for k, v in p.items() if k != "masks"}
                  for i, p in digit_set["predictions"].items()}
    with pytest.raises(ValueError, match="mask AP needs masks"):
        evaluate_detections(str(digit_set["path"]), boxes_only, CLASSES, ("bbox", "segm"))
    coco = read_annotations(digit_set["path"])
    with pytest.raises(ValueError, match="image id 5, which the annotations do not have"):
        evaluate_records(coco, [{"image_id": 5, "category_id": 4, "bbox": [0, 0, 1, 1],
                                 "score": 1.0}], CAT_IDS)


@pytest.mark.parametrize("case, expected", [
    ("missing file", "annotation file not found"),
    ("not JSON", "not JSON"),
    ("a list", "expected a JSON object, got list"),
    ("no images", "no 'images' list"),
    ("unknown image id", "annotations[0]: 'image_id' must be an image's id, got 999"),
    ("repeated image id", "two images have the id 1000"),
    ("no area", "annotations[0] has no 'area'"),
    ("bad polygon", "annotations[0]: 'segmentation' must be polygons"),
    ("repeated category name", "two categories are named 'two'"),
])
def test_bad_annotation_file_gives_one_clear_error(digit_set, tmp_path, case, expected):
    data = json.loads(digit_set["path"].read_text())
    path = tmp_path / "instances.json"
    if case == "not JSON":
        path.write_bytes(b"\x89PNG not json")
    elif case == "a list":
        data = data["images"]
    elif case == "no images":
        del data["images"]
    elif case == "unknown image id":
        data["annotations"][0]["image_id"] = 999
    elif case == "repeated image id":
        data["images"][1]["id"] = data["images"][0]["id"]
    elif case == "no area":
        del data["annotations"][0]["area"]
    elif case == "bad polygon":
        data["annotations"][0]["segmentation"] = [[1, 2, 3]]
    elif case == "repeated category name":
        data["categories"][0]["name"] = "two"
    if case not in ("missing file", "not JSON"):
        path.write_text(json.dumps(data))
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        read_annotations(path)
    message = str(info.value)
    assert expected in message and "\n" not in message, message


def test_missing_pycocotools_is_one_line(digit_set, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(ImportError, match=r"pip install 'res2net_ms\[det\]'"):
        read_annotations(digit_set["path"])
    ckpt = tmp_path / "some.ckpt"
    ckpt.write_bytes(b"never read")
    assert main(["--detector", "faster_rcnn_r2_101_fpn", "--ckpt_path", str(ckpt),
                 "--ann", str(digit_set["path"]), "--images", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: COCO results and evaluation need "
                                               "pycocotools"), err


def test_masks_drawn_translucent_per_instance():
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (60, 80, 3)).astype(np.uint8)
    masks = np.zeros((2, 60, 80), bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 35:50, 40:70] = True
    dets = {"boxes": np.array([[5, 5, 35, 35], [38, 32, 72, 52]], np.float32),
            "scores": np.array([0.9, 0.8], np.float32), "labels": np.array([3, 3]),
            "names": np.array(["car", "car"], object), "masks": masks}
    drawn = np.asarray(draw_detections(image, dets)).astype(float)
    colours = []
    for mask in masks:
        inner = np.zeros_like(mask)
        ys, xs = np.nonzero(mask)
        inner[ys.min() + 2:ys.max() - 1, xs.min() + 2:xs.max() - 1] = True  # off the label
        colour = (drawn[inner] - (1 - MASK_ALPHA) * image[inner]) / MASK_ALPHA
        assert np.abs(colour - colour.mean(axis=0)).max() < 2.5  # one colour, blended
        colours.append(colour.mean(axis=0))
    assert np.abs(colours[0] - colours[1]).max() > 30  # one colour per instance
    assert np.array_equal(drawn[54:, :4], image[54:, :4])  # far from every box and label
    box_only = {k: v for k, v in dets.items() if k != "masks"}
    plain = np.asarray(draw_detections(image, box_only))
    assert np.array_equal(plain[38:47, 43:67], image[38:47, 43:67])  # no mask, no paint
    with pytest.raises(ValueError, match=r"masks of shape \(2, 60, 80\) do not fit an image "
                                         r"of 40x30"):
        draw_detections(image[:30, :40], dets)


# --- python -m res2net_ms.det.evaluate with a real detector --------------------------------

SCALE = SMALL_DETECTOR_SCALE


@pytest.fixture(scope="module")
def tiny_set(small_detector, tmp_path_factory):
    """Two digit canvases as PNGs and a COCO annotation file (COCO's 80 categories, official
    ids) whose ground truth is what ``small_detector`` finds on them: the evaluation of the
    same detector through the command must then give AP 1, unless an image id, a category id,
    a box or a mask goes astray on the way."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "images").mkdir()
    dataset, canvases = make_digit_set(n_images=4, seed=2)
    chosen = [dataset["images"][0], dataset["images"][3]]  # 300 x 400 both: one compile
    arrays = [np.repeat(canvases[image["id"]][:, :, None], 3, axis=2) for image in chosen]
    for number, (image, array) in enumerate(zip(chosen, arrays)):
        image.update(id=50 - number, file_name=f"digits_{number}.png")  # ids not in file order
        Image.fromarray(array).save(root / "images" / image["file_name"])
    found = small_detector.predict(arrays, batch_size=2, score_thr=0.2)
    assert {name for dets in found for name in dets.names} == {"person", "car"}
    annotations = []
    for image, dets in zip(chosen, found):
        assert len(dets.boxes) > 0
        for box, label, mask in zip(dets.boxes.tolist(), dets.labels, dets.masks):
            assert mask.any()
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"],
                                "category_id": COCO_CATEGORY_IDS[label], "iscrowd": 0,
                                "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": float(mask.sum()), "segmentation": _rle(mask)})
    categories = [{"id": i, "name": n} for i, n in zip(COCO_CATEGORY_IDS, coco_classes())]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": chosen, "annotations": annotations,
                                "categories": categories}))
    return root, path, annotations


@pytest.fixture
def factory(small_detector, monkeypatch):
    """The command's ``create_detector``, giving the compiled ``small_detector`` (a second
    build would compile again) after checking what the command asked for."""
    from res2net_ms.det import cli

    calls = []

    def create(name, checkpoint_path, pretrained, scale):
        calls.append((name, checkpoint_path, tuple(scale)))
        return small_detector

    monkeypatch.setattr(cli, "create_detector", create)
    return calls


def _argv(ann, images, ckpt, *extra):
    return ["--detector", "mask_rcnn_r2_101_fpn", "--ckpt_path", str(ckpt), "--ann", str(ann),
            "--images", str(images), "--scale", *map(str, SCALE), *extra]


@pytest.mark.slow
def test_evaluate_command_end_to_end(tiny_set, factory, tmp_path, capsys):
    root, ann, annotations = tiny_set
    ckpt, out = tmp_path / "mask_rcnn.ckpt", tmp_path / "results" / "dets.json"
    ckpt.write_bytes(b"read by the real create_detector only")
    assert main(_argv(ann, root / "images", ckpt, "--batch-size", "2", "--score-thr", "0.2",
                      "--out", str(out))) == 0
    assert factory == [("mask_rcnn_r2_101_fpn", str(ckpt), SCALE)]
    printed = capsys.readouterr().out
    for iou_type in ("bbox", "segm"):
        assert f"Evaluating {iou_type}..." in printed
        assert f"{iou_type}_mAP_copypaste: 1.000 1.000 1.000" in printed
    assert printed.count(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | "
                         "maxDets=100 ] = 1.000") == 2
    records = json.loads(out.read_text())
    assert len(records) == len(annotations)
    assert sorted((r["image_id"], r["category_id"]) for r in records) == sorted(
        (a["image_id"], a["category_id"]) for a in annotations)
    for truth in annotations:  # each found again: same image, category, box and mask
        same = [r for r in records if (r["image_id"], r["category_id"]) == (
            truth["image_id"], truth["category_id"]) and np.allclose(r["bbox"], truth["bbox"],
                                                                       atol=1e-3)]
        assert len(same) == 1 and same[0]["segmentation"] == truth["segmentation"]


@pytest.mark.parametrize("case, expected", [
    ("missing annotation file", "annotation file not found"),
    ("image not in the folder", "1 of the 2 annotated images are not in"),
    ("classes not in the categories", "80 of the detector's 80 classes are not categories"),
    ("image of another size", "the image is 200x150 (upright, as its EXIF says) but the "
                              "annotations say 400x300"),
    ("corrupt image", "not a readable image"),
    ("batch size 0", "--batch-size must be at least 1"),
])
def test_bad_input_gives_one_error_line(tiny_set, digit_set, factory, tmp_path, capsys, case,
                                        expected):
    root, ann, _ = tiny_set
    images, ckpt = tmp_path / "images", tmp_path / "some.ckpt"
    ckpt.write_bytes(b"read by the real create_detector only")
    images.mkdir()
    for name in ("digits_0.png", "digits_1.png"):
        (images / name).write_bytes((root / "images" / name).read_bytes())
    extra = []
    if case == "missing annotation file":
        ann = tmp_path / "nope.json"
    elif case == "image not in the folder":
        (images / "digits_1.png").unlink()
    elif case == "classes not in the categories":
        ann = digit_set["path"]
    elif case == "image of another size":
        Image.open(images / "digits_1.png").resize((200, 150)).save(images / "digits_1.png")
    elif case == "corrupt image":
        (images / "digits_1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    elif case == "batch size 0":
        extra = ["--batch-size", "0"]
    out = tmp_path / "dets.json"
    assert main(_argv(ann, images, ckpt, "--out", str(out), *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not out.exists()
