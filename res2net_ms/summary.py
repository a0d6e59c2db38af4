"""Model summary: ``python -m res2net_ms.summary NAME [--image-size S]``.

Prints the trainable parameters, the multiply-accumulates (MACs) of one image and every
stage's channels, stride and output size. MACs are counted from the convolutions and the
classifier that actually run (forward hooks in PyNative mode), the usual convention of the
published figures; BatchNorm, pools and additions are left out. The README table's GMACs are
these counts at 224 px (``ModelConfig.counted_gmacs``; a slow test recounts them).
"""
import argparse
import sys

import mindspore as ms
import numpy as np
from mindspore import nn

from .factory import create_model
from .models import get_model_config
from .process import exit_process, run_command

__all__ = ["count_macs", "summarize", "format_summary", "main"]


def _layer_macs(cell, output):
    """MACs of one run of a conv or dense layer, from its output."""
    if isinstance(cell, nn.Conv2d):
        kh, kw = cell.kernel_size
        return output.size * (cell.in_channels // cell.group) * kh * kw
    return output.size * cell.in_channels


def count_macs(net, image_size=224):
    """MACs of ``net`` on one ``image_size`` image, per stage: returns ``(stages, head)``.

    ``stages`` lists, for each stage of the backbone, ``{"macs", "shape"}`` (its output shape
    (C, H, W)); ``head`` is the classifier's MACs. Runs in PyNative mode (restored after).
    """
    owner = {}
    for index in range(len(net.feature_info)):
        for stage_cell in net.stage_cells(index):
            for _, cell in stage_cell.cells_and_names():
                owner[id(cell)] = index
    macs = [0] * len(net.feature_info)
    head = []

    def hook(cell, inputs, output):
        if id(cell) in owner:
            macs[owner[id(cell)]] += _layer_macs(cell, output)
        else:
            head.append(_layer_macs(cell, output))

    handles = [cell.register_forward_hook(hook) for _, cell in net.cells_and_names()
               if isinstance(cell, (nn.Conv2d, nn.Dense))]
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net.set_train(False)
        x = ms.Tensor(np.zeros((1, 3, image_size, image_size), np.float32))
        outputs = net.forward_stages(x)
        if not net.features_only:
            net.forward_head(outputs[-1])
    finally:
        ms.set_context(mode=mode)
        for handle in handles:
            handle.remove()
    stages = [{"macs": m, "shape": tuple(o.shape[1:])} for m, o in zip(macs, outputs)]
    return stages, sum(head)


def summarize(name, image_size=224, num_classes=1000, **kwargs):
    """Parameters, GMACs and stages of the zoo model ``name`` (a dict, see :func:`main`)."""
    if image_size < 32:
        raise ValueError(f"image size {image_size} is too small: the networks downsample by 32")
    cfg = get_model_config(name)
    net = create_model(cfg.name, num_classes=num_classes, **kwargs)
    try:
        stages, head = count_macs(net, image_size)
    except (RuntimeError, ValueError) as exc:  # MindSpore's shape errors run over many lines
        first = str(exc).split("----")[0]
        raise ValueError(f"{cfg.name} cannot run on {image_size}x{image_size} images: "
                         f"{' '.join(first.split())}") from None
    names = {id(cell): n for n, cell in net.name_cells().items()}
    for info, stage in zip(net.feature_info, stages):
        stage.update(index=info["index"], channels=info["num_chs"], stride=info["reduction"],
                     cells=[names[id(c)] for c in net.stage_cells(info["index"])])
    total = sum(s["macs"] for s in stages) + head
    return {"model": cfg.name, "image_size": image_size, "num_classes": num_classes,
            "params": sum(p.size for p in net.trainable_params()), "gmacs": total / 1e9,
            "head_gmacs": head / 1e9, "stages": stages, "published_gmacs": cfg.gmacs}


def format_summary(s):
    size = s["image_size"]
    published = (f"; published {s['published_gmacs']:.1f} at 224" if s["published_gmacs"]
                 and size == 224 else "")
    lines = [f"{s['model']} at {size}x{size}: {s['params']:,} trainable parameters, "
             f"{s['gmacs']:.2f} GMACs (convolutions and classifier{published})",
             f"{'stage':<6} {'cells':<22} {'channels':>8} {'stride':>6} {'output':>9} "
             f"{'GMACs':>7}"]
    for st in s["stages"]:
        _, h, w = st["shape"]
        lines.append(f"{st['index']:<6} {'+'.join(st['cells']):<22} {st['channels']:>8} "
                     f"{st['stride']:>6} {f'{h}x{w}':>9} {st['macs'] / 1e9:>7.3f}")
    if s["num_classes"]:
        lines.append(f"{'head':<6} {'global pool + fc':<22} {s['num_classes']:>8} {'':>6} "
                     f"{'':>9} {s['head_gmacs']:>7.3f}")
    return "\n".join(lines) + "\n"


def build_parser():
    p = argparse.ArgumentParser(prog="python -m res2net_ms.summary",
                                description="Parameters, GMACs and stages of a zoo model.")
    p.add_argument("model", help="zoo model name or alias")
    p.add_argument("--image-size", "--image_size", dest="image_size", type=int, default=224)
    p.add_argument("--num-classes", "--num_classes", dest="num_classes", type=int,
                   default=1000)
    return p


def _command(args):
    if args.num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {args.num_classes}")
    sys.stdout.write(format_summary(summarize(args.model, args.image_size, args.num_classes)))


def main(argv=None):
    return run_command(build_parser, _command, argv)


if __name__ == "__main__":
    exit_process(main())
