"""``python -m res2net_ms.det.evaluate --detector NAME --ckpt_path FILE --ann instances.json
--images FOLDER``: box AP (and mask AP for mask models) of a detector on a COCO-format set,
computed by pycocotools' COCOeval with mmdetection's ``CocoMetric`` settings and printed as it
prints them (COCOeval's 12 lines and ``bbox_mAP_copypaste: ...``).

In Python, :func:`evaluate_detections` evaluates given detections (no detector needed) and
:func:`evaluate_detector` runs a detector over the annotated images first.
"""
import argparse
import contextlib
import io
import json
import os
from dataclasses import dataclass

import numpy as np

from ..fileio import write_text
from ..process import exit_process, run_command
from .cli import add_detector_arguments, check_detector_args, detector_from_args
from .coco import (category_ids, check_images, image_paths, load_pycocotools,
                   read_annotations, to_coco_results)

__all__ = ["METRIC_NAMES", "Evaluation", "evaluate_records", "evaluate_detections",
           "evaluate_detector", "main"]

# mmdetection's CocoMetric asks COCOeval for recall at 100, 300 and 1000 detections per image
# (its proposal_nums), so its AP lines read maxDets=1000 where COCOeval's default reads 100.
MAX_DETS = [100, 300, 1000]
METRIC_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l",
                "AR@100", "AR@300", "AR@1000", "AR_s@1000", "AR_m@1000", "AR_l@1000")
PROGRESS_EVERY = 100  # images between progress lines


@dataclass(frozen=True)
class Evaluation:
    """COCOeval's result for one IoU type: ``stats`` (the 12 numbers, in the order of
    :data:`METRIC_NAMES`; -1 where there is no ground truth) and ``summary`` (its 12 lines)."""

    iou_type: str
    stats: np.ndarray
    summary: str

    @property
    def copypaste(self):
        """mmdetection's one-line summary of the six AP numbers."""
        return f"{self.iou_type}_mAP_copypaste: " + " ".join(f"{v:.3f}" for v in self.stats[:6])

    def metrics(self):
        """``{"bbox_mAP": ..., ...}``: the 12 numbers by mmdetection's names, unrounded."""
        return {f"{self.iou_type}_{name}": float(v) for name, v in zip(METRIC_NAMES, self.stats)}

    def report(self):
        return f"Evaluating {self.iou_type}...\n{self.summary}{self.copypaste}"


def evaluate_records(coco, records, cat_ids, iou_types=("bbox",)):
    """COCOeval of COCO result records against ``coco`` as mmdetection's ``CocoMetric`` runs
    it: all the annotation's images, the categories ``cat_ids``, up to 1000 detections per
    image; for masks, the area of each detection is its mask's (the box is left out, as
    mmdetection does). Returns one :class:`Evaluation` per IoU type ("bbox", "segm")."""
    _, cocoeval, _ = load_pycocotools()
    _check_image_ids((r["image_id"] for r in records), coco)
    evaluations = []
    for iou_type in iou_types:
        if iou_type == "segm":
            _check_masks(coco, records)
        keep = {"bbox": "bbox", "segm": "segmentation"}[iou_type]
        dets = [{"image_id": r["image_id"], "category_id": r["category_id"],
                 keep: r[keep], "score": r["score"]} for r in records]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress chatter
            found = _load_results(coco, dets)
            run = cocoeval.COCOeval(coco, found, iou_type)
            run.params.catIds = list(cat_ids)
            run.params.imgIds = coco.getImgIds()
            run.params.maxDets = list(MAX_DETS)
            run.evaluate()
            run.accumulate()
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            run.summarize()
        evaluations.append(Evaluation(iou_type, np.asarray(run.stats), summary.getvalue()))
    return evaluations


def _as_coco(coco):
    """A pycocotools ``COCO`` as it is, or read from an annotation file's path."""
    return coco if hasattr(coco, "dataset") else read_annotations(coco)


def _check_image_ids(image_ids, coco):
    known = coco.imgs
    stray = next((i for i in image_ids if i not in known), None)
    if stray is not None:
        raise ValueError(f"detections for image id {stray!r}, which the annotations do not have")


def _check_masks(coco, records):
    if any("segmentation" not in r for r in records):
        raise ValueError("mask AP needs masks: these detections have none (a box-only "
                         "detector gives box AP only)")
    bare = next((a["id"] for a in coco.dataset["annotations"] if "segmentation" not in a), None)
    if bare is not None:
        raise ValueError(f"mask AP needs the annotations' masks: annotation {bare} has no "
                         f"'segmentation'")


def _load_results(coco, dets):
    """``coco.loadRes(dets)``, which fails on an empty list; no detection scores 0 AP."""
    if dets:
        return coco.loadRes(dets)
    coco_module, _, _ = load_pycocotools()
    empty = coco_module.COCO()
    empty.dataset = {"images": list(coco.dataset["images"]), "annotations": [],
                     "categories": list(coco.dataset["categories"])}
    empty.createIndex()
    return empty


def evaluate_detections(coco, detections, class_names, iou_types=None):
    """AP of given detections, without a detector.

    Args:
        coco: a pycocotools ``COCO`` (:func:`~res2net_ms.det.coco.read_annotations`) or the
            path of an annotation file.
        detections: ``{image_id: Detections}``; images left out have no detection.
        class_names: the label names (mapped to the annotation's categories by name).
        iou_types: default "bbox", and "segm" when the detections have masks.
    """
    coco = _as_coco(coco)
    cat_ids = category_ids(class_names, coco.dataset["categories"])
    _check_image_ids(detections, coco)
    records = to_coco_results(detections.values(), detections.keys(), cat_ids,
                              [(coco.imgs[i]["height"], coco.imgs[i]["width"])
                               for i in detections])
    if iou_types is None:
        with_mask = any("masks" in d for d in detections.values())
        iou_types = ("bbox", "segm") if with_mask else ("bbox",)
    return evaluate_records(coco, records, cat_ids, iou_types)


def evaluate_detector(detector, coco, folder, batch_size=1, score_thr=None, out=None,
                      log=print):
    """Run ``detector`` over the annotated images of ``folder`` and evaluate it.

    ``coco`` is a pycocotools ``COCO`` or an annotation file's path. Each image's detections
    become COCO records as soon as they are made (masks as RLE, so that memory holds one
    batch of masks) and are written to ``out`` (a COCO result JSON) when given. Returns the
    :class:`Evaluation` of boxes, and of masks for a mask detector.
    """
    coco = _as_coco(coco)
    cat_ids = category_ids(detector.class_names, coco.dataset["categories"])
    paths = image_paths(coco, folder)
    check_images(coco, paths)
    images = coco.dataset["images"]
    per_image = [None] * len(images)
    for done, (index, detections) in enumerate(
            detector.predict_iter(paths, batch_size, score_thr), start=1):
        image = images[index]
        per_image[index] = to_coco_results([detections], [image["id"]], cat_ids,
                                           [(image["height"], image["width"])])
        if done % PROGRESS_EVERY == 0 or done == len(images):
            log(f"{done}/{len(images)} images")
    records = [record for image_records in per_image for record in image_records]
    if out:
        write_text(out, json.dumps(records) + "\n")
        log(f"wrote {out} ({len(records)} detections)")
    iou_types = ("bbox", "segm") if detector.with_mask else ("bbox",)
    return evaluate_records(coco, records, cat_ids, iou_types)


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m res2net_ms.det.evaluate",
        description="Box (and mask) AP of a Res2Net detector on a COCO-format set (an "
                    "annotation file and its images), computed by pycocotools' COCOeval and "
                    "printed as mmdetection's CocoMetric prints it.")
    add_detector_arguments(p, score_help=" (default: the detector's own floor, as "
                                         "mmdetection evaluates)")
    p.add_argument("--ann", required=True, help="COCO annotation file (instances_val2017.json)")
    p.add_argument("--images", required=True, help="folder of the annotation's file_name entries")
    p.add_argument("--out", help="write the detections as COCO result JSON")
    return p


def check_args(args):
    check_detector_args(args)
    if not os.path.isdir(args.images):
        raise FileNotFoundError(f"image folder not found: '{args.images}'")
    if args.out and os.path.isdir(args.out):
        raise ValueError(f"--out must be a file name, got the folder '{args.out}'")


def run(args):
    check_args(args)
    load_pycocotools()
    coco = read_annotations(args.ann)
    print(f"{args.ann}: {len(coco.dataset['images'])} images, "
          f"{len(coco.dataset['annotations'])} annotations, "
          f"{len(coco.dataset['categories'])} categories")
    detector = detector_from_args(args)
    for evaluation in evaluate_detector(detector, coco, args.images, args.batch_size,
                                        args.score_thr, args.out):
        print(evaluation.report())


def main(argv=None):
    return run_command(build_parser, run, argv)


if __name__ == "__main__":
    exit_process(main())
