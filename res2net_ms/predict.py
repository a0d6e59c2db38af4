"""Top-k classes of images: ``python -m res2net_ms.predict IMAGE_OR_FOLDER ...`` and
``res2net_ms.predict(...)`` (as mmpretrain's ``inference_model``).

The images get the model's evaluation preprocessing (a training checkpoint's own sizes,
crop and mean/std); a batch that is not full is padded, so graph mode compiles one shape.
"""
import argparse
import csv
import io
import json
import os
import sys
from typing import Optional, Sequence, Union

import mindspore as ms
import numpy as np

from .compile_cache import compile_cell
from .inference import (InputError, LoadedModel, add_weights_arguments, find_images,
                        load_model, read_image, set_mode)
from .process import exit_process, run_command

__all__ = ["classify", "format_results", "main", "predict"]


def _softmax(logits):
    logits = logits.astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def classify(loaded, paths, topk=5, batch_size=8):
    """``[{"image": path, "top": [{"class", "label", "probability"}, ...]}, ...]``."""
    if topk < 1:
        raise InputError(f"topk must be at least 1, got {topk}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    topk = min(topk, loaded.num_classes)
    batch = loaded.fixed_batch or min(batch_size, len(paths))
    results = []
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        arrays = [loaded.preprocess(read_image(p)) for p in chunk]
        arrays += [np.zeros_like(arrays[0])] * (batch - len(arrays))
        images = ms.Tensor(np.stack(arrays))
        if not start:
            compile_cell(loaded.network, images, what="inference")
        logits = loaded.network(images).asnumpy()[:len(chunk)]
        probs = _softmax(logits)
        for path, p in zip(chunk, probs):
            order = np.argsort(-p, kind="stable")[:topk]
            results.append({"image": path, "top": [
                {"class": int(k), "label": loaded.labels[k], "probability": float(p[k])}
                for k in order]})
    return results


def predict(inputs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
            model: Union[str, LoadedModel, None] = None,
            ckpt_path: Optional[Union[str, os.PathLike]] = None, pretrained: bool = False,
            topk: int = 5, labels: Optional[str] = None, batch_size: int = 8,
            cache_dir: Optional[str] = None, ema: Optional[bool] = None) -> list[dict]:
    """Top-``topk`` classes with probabilities for every image of ``inputs``.

    Args:
        inputs: an image file or a folder (searched recursively), or a list of them.
        model: a zoo name, or a :class:`~res2net_ms.inference.LoadedModel` from
            :func:`~res2net_ms.inference.load_model` to reuse a loaded network.
        ckpt_path: a training checkpoint, converted ``.ckpt``, PyTorch/safetensors file or an
            exported ``.mindir``.
        pretrained: the official ImageNet weights of ``model``.
        topk: classes per image.
        labels: text file of class names, one a line (see ``load_model``).
        batch_size: images per forward pass.
        cache_dir: cache folder of the official weights.
        ema: a training checkpoint's EMA weights (None: when it has them).

    Returns ``[{"image": path, "top": [{"class": int, "label": str, "probability": float}]}]``.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(
        model, ckpt_path, pretrained, cache_dir, labels, ema)
    return classify(loaded, find_images(inputs), topk, batch_size)


def format_results(results, fmt="table"):
    """The results as a table (one block per image), JSON or CSV text."""
    if fmt == "json":
        return json.dumps(results, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["image", "rank", "class", "label", "probability"])
        for r in results:
            for rank, t in enumerate(r["top"], 1):
                writer.writerow([r["image"], rank, t["class"], t["label"],
                                 f"{t['probability']:.6f}"])
        return out.getvalue()
    width = max(len(t["label"]) for r in results for t in r["top"])
    lines = []
    for r in results:
        lines.append(r["image"])
        lines += [f"  {rank}. {t['label']:<{width}}  {100 * t['probability']:6.2f}%  "
                  f"(class {t['class']})" for rank, t in enumerate(r["top"], 1)]
    return "\n".join(lines) + "\n"


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m res2net_ms.predict",
        description="Top-k classes with probabilities for images, with the model's "
                    "preprocessing.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    add_weights_arguments(p, mindir=True)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--labels", help="class names, one a line")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8)
    p.add_argument("--mode", type=int, choices=(0, 1), default=0,
                   help="0: graph mode (compiles once, fast on many images), 1: PyNative")
    return p


def _command(args):
    set_mode(args.mode)
    results = predict(args.inputs, args.model, args.ckpt_path, args.pretrained, args.topk,
                      args.labels, args.batch_size, ema=args.ema)
    sys.stdout.write(format_results(results, args.format))


def main(argv=None):
    return run_command(build_parser, _command, argv)


class _CallableModule(type(sys)):
    """Importing this module binds ``res2net_ms.predict`` to it, not to the function:
    calling the module calls :func:`predict`, so ``res2net_ms.predict(...)`` always works."""

    def __call__(self, *args, **kwargs):
        return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    exit_process(main())
