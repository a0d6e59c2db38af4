"""``make demo-det``: a Faster R-CNN trained here, on real images, on 2 CPU cores.

Its backbone is the classification demo's network (``make demo``: a Res2Net with one block a
stage, trained on scikit-learn's digits; trained first when its checkpoint is missing). The
images are the same digits placed on canvases, in COCO's format
(:func:`~res2net_ms.data.write_digits_detection_set`); the held-out canvases carry only digits
of the classification demo's validation split, which its backbone never saw. Training follows
mmdetection (:mod:`.trainer`); COCOeval scores the held-out canvases and prints as mmdetection
prints, then ``box AP50: X`` as the last line. Exit status 1 under ``--target``.
"""
import argparse
import dataclasses
import os
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
from PIL import Image

from ..ckpt import save_ckpt
from ..data import DIGIT_NAMES, write_digits_detection_set
from ..inference import load_model
from ..process import BAD_INPUT, exit_process, fail
from .coco import image_paths, read_annotations
from .draw import draw_detections
from .evaluate import METRIC_NAMES, evaluate_detector
from .factory import build_detector, get_detector_config
from .preprocess import load_image
from .train_data import CocoTrainSet
from .trainer import train_detector

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSIFIER = "ckpt/demo_digits/best.ckpt"  # where make demo leaves its best checkpoint
ZOOM = 3  # the drawn held-out image is enlarged: its labels would not fit 128 pixels


def build_parser():
    p = argparse.ArgumentParser(prog="python -m res2net_ms.det.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="data/digits_det")
    p.add_argument("--out_dir", default="ckpt/demo_det")
    p.add_argument("--backbone_ckpt", default=CLASSIFIER,
                   help="a training checkpoint of the classification demo (made when missing)")
    p.add_argument("--detector", default="faster_rcnn_r2_101_fpn",
                   help="the published detector whose parts and settings are used")
    p.add_argument("--train_images", type=int, default=480)
    p.add_argument("--val_images", type=int, default=150)
    p.add_argument("--scale", type=int, default=128, help="images are resized to fit this")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--milestones", type=int, nargs="*", default=[2])
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--warmup_iters", type=int, default=100)
    p.add_argument("--rcnn_samples", type=int, default=64,
                   help="RoIs sampled per image for the box head (mmdetection: 512)")
    p.add_argument("--roi_sampling_ratio", type=int, default=1,
                   help="RoIAlign samples per bin and axis (mmdetection: adaptive; 2 in "
                        "training)")
    p.add_argument("--target", type=float, default=0.8, help="box AP50 the demo must reach")
    return p


def classifier_checkpoint(path):
    """The classification demo's checkpoint, trained now (``python -m res2net_ms.demo``) when
    it is missing."""
    if not os.path.isfile(path):
        print(f"{path} is missing: training the classification demo first", flush=True)
        code = subprocess.run([sys.executable, "-m", "res2net_ms.demo"], cwd=REPO).returncode
        if code != 0 or not os.path.isfile(path):
            raise RuntimeError(f"the classification demo failed (exit {code}): run make demo")
    return path


def demo_detector(args, backbone_ckpt, max_gts):
    """The detector of ``args.detector`` on the classification demo's network, with that
    network's weights: its model and options come from the checkpoint's stored config."""
    classifier = load_model(ckpt_path=backbone_ckpt)
    cfg = dataclasses.replace(get_detector_config(args.detector), backbone=classifier.model)
    return build_detector(
        cfg, len(DIGIT_NAMES), dict(classifier.model_kwargs), (args.scale, args.scale),
        class_names=DIGIT_NAMES, roi_sampling_ratio=args.roi_sampling_ratio,
        train_cfg={"rcnn": {"sampler": {"num": args.rcnn_samples}},
                   "static": {"max_gts": max_gts}}, backbone_checkpoint=backbone_ckpt)


def draw_held_out(detector, path, out_dir, score_thr=0.5):
    """The detections of the image at ``path`` drawn on it, enlarged ``ZOOM`` times so that
    the labels can be read; returns the written file."""
    image = load_image(path)
    detections = detector.predict(image, score_thr=score_thr)
    height, width = image.shape[:2]
    big = np.asarray(Image.fromarray(image).resize((width * ZOOM, height * ZOOM),
                                                   Image.NEAREST))
    drawn = os.path.join(out_dir, "val_" + os.path.basename(path))
    draw_detections(big, dataclasses.replace(detections, boxes=detections.boxes * ZOOM)).save(
        drawn)
    return drawn


def run(args):
    start = time.perf_counter()
    ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": "O2"})
    backbone_ckpt = classifier_checkpoint(os.path.join(REPO, args.backbone_ckpt))
    root = write_digits_detection_set(os.path.join(REPO, args.data_dir), args.train_images,
                                      args.val_images)
    data = CocoTrainSet(os.path.join(root, "annotations", "instances_train.json"),
                        os.path.join(root, "train"), DIGIT_NAMES)
    detector = demo_detector(args, backbone_ckpt, data.max_boxes)
    print(f"training on {len(data)} canvases, {args.epochs} epochs of "
          f"{len(data) // args.batch_size} steps", flush=True)
    train_start = time.perf_counter()
    train_detector(detector, data, args.epochs, args.batch_size, args.lr, args.milestones,
                   args.warmup_iters)
    train_seconds = time.perf_counter() - train_start
    out_dir = os.path.join(REPO, args.out_dir)
    weights = os.path.join(out_dir, "detector.ckpt")
    os.makedirs(out_dir, exist_ok=True)
    save_ckpt({p.name: p for p in detector.get_parameters()}, weights)
    coco = read_annotations(os.path.join(root, "annotations", "instances_val.json"))
    folder = os.path.join(root, "val")
    (boxes,) = evaluate_detector(detector, coco, folder)
    print(boxes.report())
    drawn = [draw_held_out(detector, path, out_dir) for path in image_paths(coco, folder)[:2]]
    ap50 = float(boxes.stats[METRIC_NAMES.index("mAP_50")])
    print(f"demo-det: {time.perf_counter() - start:.0f} s in all, training "
          f"{train_seconds:.0f} s; weights in {weights}, held-out images drawn in "
          f"{', '.join(drawn)}; "
          f"target box AP50 >= {args.target}{'' if ap50 >= args.target else ' NOT reached'}")
    print(f"box AP50: {ap50:.3f}", flush=True)
    return 0 if ap50 >= args.target else 1


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except BAD_INPUT + (RuntimeError,) as exc:  # RuntimeError: the classification demo failed
        return fail(exc)


if __name__ == "__main__":
    exit_process(main())
