"""Command line: ``python -m res2net_ms.detect IMAGE_OR_FOLDER --ckpt_path X --out boxes.json
--show out.png [--score-thr 0.3]`` with mmdetection's Faster R-CNN R2-101-FPN."""
import argparse
import io
import json
import os

import numpy as np

from .data import ImageError, bad_images, read_rgb
from .det import create_detector, list_detectors
from .det.draw import draw_detections
from .fileio import write_bytes, write_text
from .inference import find_images
from .process import exit_process, fail, warn_slow_mindspore


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m res2net_ms.detect",
        description="Detect COCO objects with a Res2Net detector (mmdetection's checkpoints, "
                    "read directly, or a converted .ckpt); write the boxes as JSON and draw them.")
    p.add_argument("images", help="an image, or a folder of images")
    p.add_argument("--ckpt_path", required=True,
                   help="mmdetection checkpoint (.pth, e.g. faster_rcnn_r2_101_fpn_2x_coco-"
                        "175f1da6.pth) or a .ckpt written by res2net_ms.det.convert_detector")
    p.add_argument("--model", default="faster_rcnn_r2_101_fpn", choices=list_detectors())
    p.add_argument("--out", help="JSON file for the detections")
    p.add_argument("--show", help="image with the boxes drawn (for a folder: a folder)")
    p.add_argument("--score-thr", type=float, default=0.3,
                   help="keep boxes scoring above this (default 0.3; the detector's own floor "
                        "is 0.05)")
    p.add_argument("--scale", type=int, nargs=2, default=(1333, 800), metavar=("LONG", "SHORT"),
                   help="resize images to fit LONG x SHORT, keeping the ratio (mmdetection: "
                        "1333 800)")
    return p


def read_image(path):
    """An RGB uint8 array, turned upright as its EXIF orientation says (as OpenCV reads it)."""
    return np.asarray(read_rgb(path, exif_transpose=True))


def check_args(args):
    if not 0.0 <= args.score_thr <= 1.0:
        raise ValueError(f"--score-thr must be within 0..1, got {args.score_thr}")
    if min(args.scale) < 32:
        raise ValueError(f"--scale must be at least 32 32, got {' '.join(map(str, args.scale))}")
    if not os.path.isfile(args.ckpt_path):
        raise FileNotFoundError(f"checkpoint not found: '{args.ckpt_path}'")
    if not args.out and not args.show:
        raise ValueError("nothing to write: give --out and/or --show")


def to_json(path, image, result):
    return {"file": os.path.basename(path), "width": image.shape[1], "height": image.shape[0],
            "detections": [{"box": [round(float(v), 2) for v in box], "score": round(float(s), 4),
                            "label": int(label), "name": str(name)}
                           for box, s, label, name in zip(result.boxes, result.scores,
                                                          result.labels, result.names)]}


def show_path(args, path, folder_input):
    if not folder_input:
        return args.show
    return os.path.join(args.show, os.path.splitext(os.path.basename(path))[0] + ".png")


def encode_image(canvas, path):
    """Bytes of ``canvas`` in the format the file name asks for (PNG unless .jpg/.jpeg)."""
    ext = os.path.splitext(path)[1].lower()
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG" if ext in (".jpg", ".jpeg") else "PNG")
    return buffer.getvalue()


def run(args):
    check_args(args)
    warn_slow_mindspore()
    files = find_images(args.images)
    folder_input = os.path.isdir(args.images)
    for path, problem in bad_images(files)[:1]:  # every file is checked before the model
        raise ImageError(f"{path}: not a readable image ({problem})")
    detector = create_detector(args.model, checkpoint_path=args.ckpt_path,
                               scale=tuple(args.scale))
    records = []
    for path in files:
        image = read_image(path)
        result = detector.predict(image, score_thr=args.score_thr)
        records.append(to_json(path, image, result))
        summary = ", ".join(f"{n} {s:.2f}" for n, s in zip(result.names[:5], result.scores[:5]))
        print(f"{path}: {len(result.boxes)} boxes" + (f" ({summary}, ...)" if summary else ""))
        if args.show:
            target = show_path(args, path, folder_input)
            write_bytes(target, encode_image(draw_detections(image, result), target))
            print(f"wrote {target}")
    if args.out:
        write_text(args.out, json.dumps({"model": args.model, "checkpoint": args.ckpt_path,
                                         "score_thr": args.score_thr, "images": records},
                                        indent=1) + "\n")
        print(f"wrote {args.out}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError) as exc:
        return fail(exc)
    return 0


if __name__ == "__main__":
    exit_process(main())
