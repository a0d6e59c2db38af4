"""Read any supported checkpoint file into numpy: PyTorch (without torch) and safetensors.

PyTorch pickles go through the restricted unpickler of :mod:`.torch_pickle`; safetensors
files through the ``safetensors`` package's numpy API, which needs no torch either. MindSpore
``.ckpt`` files are read by :func:`res2net_ms.ckpt.load_ckpt`.
"""
import os
import struct

import numpy as np
import safetensors
from safetensors.numpy import save_file

from ..fileio import atomic_write
from .errors import CheckpointFormatError, UnsafeCheckpointError
from .torch_pickle import ZIP_MAGIC, bf16_to_f32, load_torch, read_torch_file

__all__ = ["CheckpointFormatError", "UnsafeCheckpointError", "checkpoint_format", "load_any", "load_safetensors",
           "load_safetensors_metadata", "load_torch", "read_torch_file", "save_safetensors"]


def _safetensors_error(path, exc):
    detail = " ".join(str(exc).split()).replace("Error while deserializing header: ", "")
    return CheckpointFormatError(f"{path}: not a valid safetensors file, truncated or corrupt "
                                 f"({detail[:200]})")


def _open_safetensors(path):
    path = os.fspath(path)
    try:
        return safetensors.safe_open(path, framework="np")
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise _safetensors_error(path, exc) from None


def load_safetensors(path):
    """Every tensor of a safetensors file as a numpy array; BF16 tensors become float32.

    numpy has no bfloat16, so files holding BF16 are decoded from their raw bytes.
    """
    try:
        with _open_safetensors(path) as handle:
            keys = list(handle.keys())
            if not any(handle.get_slice(k).get_dtype() == "BF16" for k in keys):
                return {k: handle.get_tensor(k) for k in keys}
        with open(path, "rb") as f:
            entries = safetensors.deserialize(f.read())
    except CheckpointFormatError:
        raise
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise _safetensors_error(os.fspath(path), exc) from None
    return {name: _from_raw(info) for name, info in entries}


def _from_raw(info):
    codes = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8",
             "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "U16": "<u2", "U32": "<u4",
             "U64": "<u8", "BOOL": "?"}
    dtype = info["dtype"].upper() if isinstance(info["dtype"], str) else str(info["dtype"])
    if dtype not in codes:
        raise CheckpointFormatError(f"unsupported safetensors dtype {dtype}")
    array = np.frombuffer(bytes(info["data"]), dtype=codes[dtype]).reshape(info["shape"])
    if dtype == "BF16":
        return bf16_to_f32(array)
    return array.astype(array.dtype.newbyteorder("="))


def load_safetensors_metadata(path):
    """The ``__metadata__`` string map of a safetensors file (empty if absent)."""
    with _open_safetensors(path) as handle:
        return handle.metadata() or {}


def save_safetensors(tensors, path, metadata=None):
    """Write numpy arrays as a safetensors file, atomically."""
    arrays = {}
    for name, array in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        if not isinstance(array, np.ndarray):
            raise TypeError(f"tensor '{name}' is a {type(array).__name__}, not a numpy array")
        # The package writes the array's memory as it is: make it C-ordered first.
        arrays[name] = array if array.flags.c_contiguous else array.copy(order="C")
    if metadata is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("safetensors metadata must map strings to strings")

    def write(tmp):
        try:
            save_file(arrays, tmp, metadata=metadata)
        except safetensors.SafetensorError as exc:
            raise ValueError(f"cannot write {path}: {' '.join(str(exc).split())}") from None

    return atomic_write(path, write)


_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".tar")


def checkpoint_format(path):
    """The format of the checkpoint file ``path``: 'torch', 'safetensors', 'ckpt'
    (MindSpore) or None, from its content first, then from its extension.

    safetensors is tested first: its header length may begin with the byte 0x80 that also
    opens a pickle, while a pickle never passes its test. A MindSpore protobuf has no magic
    number: a ``.ckpt`` that is neither of the others is one (a ``.ckpt`` that is really a
    torch.save zip, as Lightning writes, is read as torch).
    """
    with open(path, "rb") as f:
        head = f.read(9)
        size = os.fstat(f.fileno()).st_size
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"
    if head.startswith(ZIP_MAGIC) or head[:1] == b"\x80":
        return "torch"
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in _TORCH_SUFFIXES:
        return "torch"
    return "ckpt" if suffix == ".ckpt" else None


def load_any(path):
    """Load a PyTorch or safetensors checkpoint (see :func:`checkpoint_format`).

    MindSpore ``.ckpt`` files are refused with a pointer to the MindSpore loader.
    """
    source = os.fspath(path)
    kind = checkpoint_format(path)
    if kind == "torch":
        return load_torch(path)
    if kind == "safetensors":
        return load_safetensors(path)
    if kind == "ckpt":
        raise CheckpointFormatError(
            f"{source}: not a PyTorch or safetensors file; "
            "use the MindSpore loader for .ckpt checkpoints")
    raise CheckpointFormatError(
        f"{source}: unrecognised checkpoint format (expected a PyTorch .pth/.pt/.bin "
        "or a .safetensors file)")
