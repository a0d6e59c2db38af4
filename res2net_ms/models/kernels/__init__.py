"""CPU kernels for the pools, whose MindSpore CPU kernels are the limit.

MindSpore runs a padded 2-D pool on CPU as a 3-D pool (``MaxPool3DWithArgmax``, ``AvgPool3D``):
the stem's max pool alone took 4 % of an inference (``benchmarks/bench.py``), 5-7x the time of
``cpu_kernels.cc``. That file is compiled once with the system C++ compiler into the cache
folder (``$R2N_CACHE_DIR/kernels``, beside the weights and the compiled graphs) and runs
through ``ops.Custom`` (``func_type="aot"``), forward and backward. Only on CPU and float32; on
other devices, other dtypes, without a compiler or with ``RES2NET_MS_CPU_KERNELS=0`` the cells
run MindSpore's own pools, which compute the same values.
"""
import functools
import hashlib
import logging
import os
import subprocess
import tempfile

import mindspore as ms
from mindspore import nn, ops

from ...fileio import cache_folder

__all__ = ["Pool3x3", "enabled"]

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels.cc")
_CFLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC"]


@functools.lru_cache(maxsize=None)
def _library():
    """Path of the compiled kernels (built on first use, keyed by source and flags), or None."""
    with open(_SOURCE, "rb") as f:
        key = hashlib.sha256(f.read() + " ".join(_CFLAGS).encode()).hexdigest()[:16]
    path = os.path.join(cache_folder(), "kernels", f"cpu_kernels_{key}.so")
    if os.path.isfile(path):
        return path
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Compiled beside its final name, then renamed: not fileio.atomic_write, which would
        # report a missing compiler as a file it cannot write.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
        os.close(fd)
        subprocess.run([os.environ.get("CXX", "g++"), *_CFLAGS, "-o", tmp, _SOURCE],
                       check=True, capture_output=True, timeout=300)
        os.replace(tmp, path)
        return path
    except (OSError, subprocess.SubprocessError) as exc:
        detail = (getattr(exc, "stderr", None) or b"").decode(errors="replace").strip()
        logging.getLogger("res2net_ms").warning(
            "warning: cannot compile the CPU pool kernels (%s): using MindSpore's slower pools",
            detail[-200:] or exc)
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
        return None


def enabled():
    """True when the cells built now run the CPU kernels (CPU target, compiled, not disabled)."""
    return (os.environ.get("RES2NET_MS_CPU_KERNELS", "1") != "0"
            and ms.get_context("device_target") == "CPU" and _library() is not None)


def _custom(name, out_shape, out_dtype, bprop=None):
    return ops.Custom(f"{_library()}:{name}", out_shape=out_shape, out_dtype=out_dtype,
                      func_type="aot", bprop=bprop)


def _pool_shape(stride):
    return lambda x: (x[0], x[1], (x[2] - 1) // stride + 1, (x[3] - 1) // stride + 1)


@functools.lru_cache(maxsize=None)
def _pool_op(kind, stride):
    name = f"{kind.capitalize()}Pool3x3s{stride}"
    grad = _custom(name + "Grad", lambda x, dy: x, lambda x, dy: x)

    def bprop(x, out, dout):
        return (grad(x, dout),)

    return _custom(name, _pool_shape(stride), lambda x: x, bprop)


class Pool3x3(nn.Cell):
    """3x3 pool with padding 1 and stride 1 or 2: ``max`` (padding never wins) or ``avg``
    (padding counted, divisor 9), i.e. PyTorch's ``MaxPool2d(3, s, 1)`` and
    ``AvgPool2d(3, s, 1)``."""

    def __init__(self, kind, stride):
        super().__init__()
        if kind == "max":
            self.framework = nn.MaxPool2d(3, stride, pad_mode="pad", padding=1)
        else:
            self.framework = nn.AvgPool2d(3, stride, pad_mode="pad", padding=1,
                                          count_include_pad=True)
        self.kernel = _pool_op(kind, stride) if stride in (1, 2) and enabled() else None

    def construct(self, x):
        if self.kernel is not None and x.dtype == ms.float32:
            return self.kernel(x)
        return self.framework(x)
