"""Command line: ``python -m res2net_ms.detect IMAGE_OR_FOLDER --detector htc_r2_101_fpn
--ckpt_path X --out results.json --show drawn/ [--batch-size 4] [--score-thr 0.3]`` with
mmdetection's Res2Net detectors."""
import argparse
import io
import json
import os

from .data import ImageError, bad_images
from .det.cli import add_detector_arguments, check_detector_args, detector_from_args
from .det.coco import category_ids, to_coco_results
from .det.draw import draw_detections
from .det.preprocess import load_image
from .fileio import write_bytes, write_text
from .inference import find_images
from .process import exit_process, run_command


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m res2net_ms.detect",
        description="Detect COCO objects (boxes, and masks with the mask detectors) with a "
                    "Res2Net detector (mmdetection's checkpoints, read directly, or a converted "
                    ".ckpt); write them as COCO result JSON and draw them.")
    p.add_argument("images", help="an image, or a folder of images")
    add_detector_arguments(p, score_thr=0.3, score_help=" (default 0.3; the detector's own "
                                                        "floor is 0.05, HTC's 0.001)")
    p.add_argument("--out", help="COCO result JSON of the detections (boxes x, y, w, h; masks "
                                 "as RLE; image ids: the file names' numbers when they all "
                                 "are, as COCO's, else 1, 2, ... in file order)")
    p.add_argument("--show", help="image with the detections drawn (for a folder: a folder)")
    return p


def check_args(args):
    check_detector_args(args)
    if not args.out and not args.show:
        raise ValueError("nothing to write: give --out and/or --show")


def image_ids(files):
    """COCO image ids: the numbers the file names are (COCO's ``000000397133.jpg``) when they
    all are, otherwise 1, 2, ... in the order of the files."""
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(files) + 1))


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
    files = find_images(args.images)
    folder_input = os.path.isdir(args.images)
    for path, problem in bad_images(files)[:1]:  # every file is checked before the model
        raise ImageError(f"{path}: not a readable image ({problem})")
    detector = detector_from_args(args)
    ids, labels_to_ids = image_ids(files), category_ids(detector.class_names)
    records = [[] for _ in files]
    for index, result in detector.predict_iter(files, args.batch_size, args.score_thr):
        path = files[index]
        summary = ", ".join(f"{n} {s:.2f}" for n, s in zip(result.names[:5], result.scores[:5]))
        print(f"{path}: {len(result.boxes)} detections" + (f" ({summary}, ...)" if summary
                                                            else ""))
        if args.out:
            records[index] = to_coco_results([result], [ids[index]], labels_to_ids)
        if args.show:
            target = show_path(args, path, folder_input)
            drawn = draw_detections(load_image(path), result)
            write_bytes(target, encode_image(drawn, target))
            print(f"wrote {target}")
    if args.out:
        flat = [record for image_records in records for record in image_records]
        write_text(args.out, json.dumps(flat) + "\n")
        print(f"wrote {args.out} ({len(flat)} detections in COCO's result format)")


def main(argv=None):
    return run_command(build_parser, run, argv)


if __name__ == "__main__":
    exit_process(main())
