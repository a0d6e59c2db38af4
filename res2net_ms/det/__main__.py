"""``python -m res2net_ms.det convert SRC --out OUT.ckpt``: a whole mmdetection detector
checkpoint (backbone, FPN, RPN, RoI head, class names) into one MindSpore ``.ckpt``.

It lives beside the detector rather than in ``python -m res2net_ms.convert``, which knows the
model zoo only: the detector's parameter names come from the detector."""
import argparse

from ..process import exit_process, run_command
from .factory import convert_detector, list_detectors


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m res2net_ms.det",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="mmdetection detector checkpoint -> .ckpt")
    convert.add_argument("src", help="e.g. faster_rcnn_r2_101_fpn_2x_coco-175f1da6.pth")
    convert.add_argument("--out", required=True, help="MindSpore checkpoint to write")
    convert.add_argument("--model", default="faster_rcnn_r2_101_fpn", choices=list_detectors())
    convert.add_argument("--num-classes", type=int, default=80)
    return parser


def _command(args):
    print(convert_detector(args.src, args.out, args.model, args.num_classes))
    print(f"wrote {args.out}")


def main(argv=None):
    return run_command(build_parser, _command, argv)


if __name__ == "__main__":
    exit_process(main())
