"""Export a network to MINDIR (MindSpore, MindSpore Lite) or ONNX, and check the file.

``python -m res2net_ms.export --model NAME --ckpt_path X --format MINDIR|ONNX [--batch N]
[--image-size S] [--out PATH]``

Both formats are written from the export form of the network
(:func:`res2net_ms.models.fuse.export_form`: BatchNorm folded into the convs, padded pools as an
explicit pad and a "valid" pool), which MindSpore's ONNX exporter handles and which holds no CPU
kernel of this project. The file is then loaded back (``mindspore.load`` + ``nn.GraphCell``, or
onnxruntime when installed) and its logits compared with the network's on a random batch.
A MINDIR also stores the model name, class count, class names and preprocessing, so that
``python -m res2net_ms.predict --ckpt_path model.mindir`` needs nothing else.

An ONNX file takes any batch size (``mindspore.onnx.export`` with a dynamic batch axis); a
MINDIR's batch is fixed: a dynamic-batch MINDIR of these networks does not compile
(``ops.split`` in the blocks).
"""
import argparse
import json
import math
import os
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import nn, onnx

from .compile_cache import compile_cell
from .fileio import atomic_write
from .inference import (MINDIR_KEY, InputError, LoadedModel, add_weights_arguments,
                        load_model, set_mode)
from .models.fuse import export_form
from .process import exit_process, run_command

__all__ = ["ExportError", "FORMATS", "TOLERANCE", "export", "main", "run_exported"]

FORMATS = ("MINDIR", "ONNX")
# Largest max |exported - network| / max |network| accepted by the check.
TOLERANCE = {"MINDIR": 1e-5, "ONNX": 1e-4}


class ExportError(RuntimeError):
    """The export failed, or the file does not compute the network's logits."""


def run_exported(path, fmt, inputs):
    """Logits of an exported file on ``inputs`` (numpy); None for ONNX without onnxruntime."""
    if fmt == "MINDIR":
        return nn.GraphCell(ms.load(path))(ms.Tensor(inputs)).asnumpy()
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def _write(network, inputs, path, fmt, metadata):
    def store(proto):
        entry = proto.user_info.add()
        entry.key, entry.value = MINDIR_KEY, json.dumps(metadata)

    try:
        if fmt == "ONNX":
            onnx.export(network, ms.Tensor(inputs), file_name=path, input_names=["images"],
                        output_names=["logits"], dynamic_axes={"images": {0: "batch"}})
        else:
            ms.export(network, ms.Tensor(inputs), file_name=path, file_format=fmt,
                      custom_func=store)
    except (RuntimeError, TypeError, ValueError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), str(exc))
        raise ExportError(f"cannot export to {fmt}: {first.strip()}") from None


def _largest_difference(path, fmt, checks, expected):
    """max |file - network| / max |network| over the check batches; None if nothing here
    runs the file."""
    diff = None
    for x, want in zip(checks, expected):
        got = run_exported(path, fmt, x)
        if got is None:
            return None
        diff = max(diff or 0.0, float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)))
    return diff


def export(loaded: LoadedModel, out: str, fmt: str = "MINDIR", batch: int = 1,
           image_size: Optional[int] = None, seed: int = 0) -> dict:
    """Write ``loaded`` (from :func:`~res2net_ms.inference.load_model`) to ``out`` and check it.

    ``out`` gains the format's suffix when it lacks it, as ``mindspore.export`` names its
    files (``mindspore.load`` reads only ``.mindir`` files). The file is checked before it takes
    its name: on any failure nothing is left at ``out`` (a file already there stays as it was).
    The network of ``loaded`` is turned into its export form (in place). Returns
    ``{"path", "format", "input_shape", "bytes", "max_rel_diff"}``; ``max_rel_diff`` is None when
    nothing can run the file here (ONNX without onnxruntime). Raises :class:`ExportError`
    when the export fails or the file's logits differ from the network's beyond
    :data:`TOLERANCE`.
    """
    fmt = fmt.upper()
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt}: choose MINDIR or ONNX")
    if loaded.fixed_batch is not None:
        raise InputError(f"{loaded.source} is an exported file already: export the checkpoint")
    if batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    size = image_size or loaded.preprocess.image_size
    if size < 32:
        raise InputError(f"image size {size} is too small: the networks downsample by 32")
    suffix = "." + fmt.lower()
    out = os.fspath(out)
    out = out if out.endswith(suffix) else out + suffix
    inputs = np.random.RandomState(seed).randn(batch, 3, size, size).astype(np.float32)
    # An ONNX file is also checked on another batch size, its batch axis being dynamic.
    checks = [inputs] + ([inputs[:1].repeat(batch + 2, axis=0) * 0.5] if fmt == "ONNX" else [])
    network = loaded.network
    network.set_train(False)
    compile_cell(network, ms.Tensor(inputs), what="network to export")
    expected = [network(ms.Tensor(x)).asnumpy() for x in checks]
    export_form(network)
    metadata = loaded.metadata()
    metadata["preprocess"]["image_size"] = size
    checked = {}

    def write_and_check(tmp):
        compile_cell(network, ms.Tensor(inputs), what=f"{fmt} export",
                     phase=f"export.{fmt.lower()}",
                     call=lambda: _write(network, inputs, tmp, fmt, metadata))
        diff = checked["diff"] = _largest_difference(tmp, fmt, checks, expected)
        if diff is not None and not diff <= TOLERANCE[fmt]:
            raise ExportError(f"the {fmt} file computes other logits than the network: max "
                              f"|delta| is {diff:.2e} of the largest logit (tolerance "
                              f"{TOLERANCE[fmt]:g}); nothing written to {out}")

    # The temporary name ends with the suffix, or MindSpore would append one.
    path = atomic_write(out, write_and_check, suffix=suffix)
    shape = ["N" if fmt == "ONNX" else batch, 3, size, size]
    return {"path": path, "format": fmt, "input_shape": shape,
            "bytes": os.path.getsize(path), "max_rel_diff": checked["diff"]}


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m res2net_ms.export",
        description="Export a network to MINDIR (fixed batch) or ONNX (any batch) and check "
                    "the file.")
    add_weights_arguments(p)
    p.add_argument("--format", type=str.upper, choices=FORMATS, default="MINDIR")
    p.add_argument("--batch", type=int, default=1,
                   help="batch size of a MINDIR's input (ONNX takes any)")
    p.add_argument("--image-size", "--image_size", dest="image_size", type=int,
                   help="input height and width (default: the model's evaluation size)")
    p.add_argument("--out", help="file to write (default: <model>.mindir or <model>.onnx; "
                                 "the format's suffix is added when missing)")
    return p


def _command(args):
    set_mode(0)
    if args.ckpt_path and args.ckpt_path.lower().endswith(".mindir"):
        raise InputError(f"{args.ckpt_path} is an exported file already: export the "
                         f"checkpoint it was made from")
    loaded = load_model(args.model, args.ckpt_path, args.pretrained, ema=args.ema)
    out = args.out or f"{loaded.model}.{args.format.lower()}"
    result = export(loaded, out, args.format, args.batch, args.image_size)
    pre, size = loaded.preprocess, result["input_shape"][-1]
    print(f"wrote {result['path']} ({result['format']}, {result['bytes'] / 2**20:.1f} MiB): "
          f"{loaded.model}, input ({', '.join(map(str, result['input_shape']))}) float32 NCHW, "
          f"{loaded.num_classes} logits")
    print(f"preprocessing: RGB, resize the short side to {math.floor(size / pre.crop_pct)} "
          f"({pre.interpolation}), centre crop {size}, "
          f"(pixel - mean) / std with mean {list(pre.mean)} std {list(pre.std)} (0-255)")
    if result["max_rel_diff"] is None:
        print("not checked: pip install onnxruntime to run the file here")
    else:
        runner = "mindspore.load + nn.GraphCell" if result["format"] == "MINDIR" else "onnxruntime"
        print(f"checked with {runner}: max |delta| = {result['max_rel_diff']:.1e} of the largest "
              f"logit (tolerance {TOLERANCE[result['format']]:g})")


def main(argv=None):
    """0; 2 for bad input; 1 when the export failed or its file does not compute the logits."""
    return run_command(build_parser, _command, argv, statuses={ExportError: 1})


if __name__ == "__main__":
    exit_process(main())
