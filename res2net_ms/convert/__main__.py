"""Command line: ``python -m res2net_ms.convert SRC --model NAME --out OUT.ckpt``."""
import argparse

from ..process import exit_process, run_command
from .converter import convert_checkpoint, export_torch
from .layouts import LAYOUTS


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m res2net_ms.convert",
        description="Convert a PyTorch / safetensors / mindcv Res2Net checkpoint to a MindSpore "
                    ".ckpt (strict), or one of ours back to PyTorch with --to-torch.")
    p.add_argument("src", help="checkpoint to read (.pth .pt .bin .safetensors .ckpt)")
    p.add_argument("--model", help="zoo model name, e.g. res2net50_26w_4s")
    p.add_argument("--out", help="MindSpore checkpoint to write")
    p.add_argument("--source", default="auto", choices=("auto", "timm") + LAYOUTS,
                   help="layout of SRC (default: detected from its keys)")
    p.add_argument("--num-classes", type=int, help="re-initialise the classifier with N classes")
    p.add_argument("--drop-head", action="store_true", help="leave the classifier out")
    p.add_argument("--to-torch", metavar="OUT.safetensors",
                   help="write SRC (a .ckpt of ours) in the official PyTorch layout")
    return p


def _command(args):
    if args.to_torch:
        tensors = export_torch(args.src, args.to_torch, args.model)
        print(f"wrote {args.to_torch}: {len(tensors)} tensors in the official PyTorch layout")
        return
    if not args.model or not args.out:
        raise ValueError("--model and --out are required (or use --to-torch)")
    source = "official" if args.source == "timm" else args.source
    _, report = convert_checkpoint(args.src, args.model, args.out, source, args.num_classes,
                                   args.drop_head)
    print(report)
    print(f"wrote {args.out}")


def main(argv=None):
    return run_command(build_parser, _command, argv)


if __name__ == "__main__":
    exit_process(main())
