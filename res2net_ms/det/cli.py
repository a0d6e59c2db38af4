"""The options every detection command line shares (``detect``, ``det.evaluate``): which
detector, its weights, the input size, the batch and the score floor; checked before anything
is built, and the detector they describe."""
import os

from ..process import warn_slow_mindspore
from .factory import create_detector, list_detectors

__all__ = ["add_detector_arguments", "check_detector_args", "detector_from_args"]


def add_detector_arguments(parser, score_thr=None, score_help=""):
    parser.add_argument("--detector", "--model", dest="detector",
                        default="faster_rcnn_r2_101_fpn", choices=list_detectors(),
                        help="which detector (default faster_rcnn_r2_101_fpn)")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--ckpt_path", "--ckpt-path", dest="ckpt_path",
                         help="mmdetection checkpoint (.pth, e.g. htc_r2_101_fpn_20e_coco-"
                              "3a8d2112.pth) or a .ckpt written by python -m res2net_ms.det "
                              "convert")
    weights.add_argument("--pretrained", action="store_true",
                         help="mmdetection's published COCO weights (downloaded once)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="images per compiled call (images of one padded size share a "
                             "batch; default 1)")
    parser.add_argument("--score-thr", type=float, default=score_thr,
                        help="keep detections scoring above this" + score_help)
    parser.add_argument("--scale", type=int, nargs=2, default=(1333, 800),
                        metavar=("LONG", "SHORT"),
                        help="resize images to fit LONG x SHORT, keeping the ratio "
                             "(mmdetection: 1333 800)")


def check_detector_args(args):
    """One clear error for a bad option or a missing checkpoint, before anything is built."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.score_thr is not None and not 0.0 <= args.score_thr <= 1.0:
        raise ValueError(f"--score-thr must be within 0..1, got {args.score_thr}")
    if min(args.scale) < 32:
        raise ValueError(f"--scale must be at least 32 32, got {' '.join(map(str, args.scale))}")
    if args.ckpt_path and not os.path.isfile(args.ckpt_path):
        raise FileNotFoundError(f"checkpoint not found: '{args.ckpt_path}'")


def detector_from_args(args):
    warn_slow_mindspore()
    return create_detector(args.detector, checkpoint_path=args.ckpt_path,
                           pretrained=args.pretrained, scale=tuple(args.scale))
