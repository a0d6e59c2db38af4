"""Reading and writing MindSpore ``.ckpt`` files: one writer and one reader for the project.

The converter (weights), the engine (training state) and the hub (its cache) all go through
these, so every checkpoint is written atomically (:func:`res2net_ms.fileio.atomic_write`) and
every unreadable file fails with the same one-line :class:`CheckpointReadError`.

The reader is our own: ``mindspore.load_checkpoint`` trusts the shape stored beside each
tensor's bytes, so a corrupt file makes it read past the buffer (a silently wrong tensor) or
corrupt the heap (the interpreter aborts); checking its input first would parse the file twice.
"""
import binascii
import contextlib
import logging
import math
import os

import mindspore as ms
import numpy as np
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from mindspore import log as ms_log
from mindspore.train.checkpoint_pb2 import Checkpoint

from .fileio import atomic_write

__all__ = ["CheckpointReadError", "save_ckpt", "load_ckpt"]


class CheckpointReadError(ValueError):
    """The file is not a readable MindSpore checkpoint (missing, truncated, another format)."""


def save_ckpt(weights, path, append_dict=None):
    """Write ``{name: array or Tensor}`` as a MindSpore checkpoint, atomically.

    ``append_dict`` holds extra scalar or string entries (training metadata).
    """
    items = [{"name": k, "data": v if isinstance(v, ms.Tensor) else ms.Tensor(v)}
             for k, v in weights.items()]

    def write(tmp):
        with _quiet_mindspore():
            ms.save_checkpoint(items, tmp, append_dict=append_dict)

    # save_checkpoint appends ".ckpt" to other names, so the temporary name ends with it.
    return atomic_write(path, write, suffix=".ckpt")


@contextlib.contextmanager
def _quiet_mindspore():
    """MindSpore logs a CRITICAL line of its own when a save fails; our error says it in one
    line (its logger is private API: ``mindspore.log._get_logger``)."""
    logger = ms_log._get_logger()
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_ckpt(path, names=None):
    """``{name: Parameter or str}`` of a MindSpore checkpoint (only ``names`` if given), as
    ``mindspore.load_checkpoint`` returns it, once every entry has been checked."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointReadError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CheckpointReadError(f"cannot read {path}: {exc.strerror}") from None
    try:
        entries = _checked_entries(data)
    except (DecodeError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointReadError(f"{path}: not a readable MindSpore checkpoint ({reason}): "
                                  f"the file is truncated, corrupt or of another format")
    return {tag: value if isinstance(value, str) else ms.Parameter(_data(*value), name=tag)
            for tag, value in entries.items() if names is None or tag in names}


# numpy's view of each tensor type MindSpore writes (its serialization's type table);
# bfloat16, which numpy lacks, is read as its raw 16 bits.
_DTYPES = {"Int8": np.int8, "UInt8": np.uint8, "Int16": np.int16, "UInt16": np.uint16,
           "Int32": np.int32, "UInt32": np.uint32, "Int64": np.int64, "UInt64": np.uint64,
           "Float16": np.float16, "Float32": np.float32, "Float64": np.float64, "Bool": np.bool_,
           "BFloat16": np.uint16}
# save_checkpoint(crc_check=True) ends the file with this mark and a 10-byte big-endian CRC-32.
_CRC_MARK = b"crc_num"
_MAX_DIMS = 32  # numpy's limit


def _checked_entries(data):
    """``{tag: str or (type, shape, bytes)}`` of a checkpoint's bytes, every tensor's byte
    count checked against its shape and type; raises ``DecodeError`` or ``ValueError``."""
    if data[-17:-10] == _CRC_MARK:
        stored, data = int.from_bytes(data[-10:], "big"), memoryview(data)[:-17]
        if binascii.crc32(data) != stored:
            raise ValueError("its CRC-32 does not match its content")
    checkpoint = Checkpoint()
    checkpoint.ParseFromString(data)
    # MindSpore writes a tensor over 512 MB as consecutive entries of the same tag.
    groups = []
    for entry in checkpoint.value:
        if not entry.HasField("tensor"):
            raise ValueError(f"entry {entry.tag[:80]!r} is not a tensor (map parameters are "
                             f"not read)")
        tensor = entry.tensor
        # A damaged field number turns an entry into an unknown field: parsed, then dropped.
        if len(UnknownFieldSet(entry)) or len(UnknownFieldSet(tensor)):
            raise ValueError(f"entry {entry.tag[:80]!r} holds fields a checkpoint does not have")
        part = (tensor.tensor_type, tuple(tensor.dims))
        if groups and groups[-1][0] == entry.tag and groups[-1][1] == part:
            groups[-1][2].append(tensor.tensor_content)
        else:
            groups.append((entry.tag, part, [tensor.tensor_content]))
    if len(UnknownFieldSet(checkpoint)):
        raise ValueError("it holds fields a checkpoint does not have")
    if not groups:
        raise ValueError("it holds no tensors")
    entries = {}
    for tag, (kind, dims), chunks in groups:
        content = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        entries[tag] = _checked(tag[:80], kind, dims, content)  # a later duplicate wins
    return entries


def _checked(tag, kind, dims, content):
    if kind == "str":
        if len(content) % 4:
            raise ValueError(f"string {tag!r} holds {len(content)} bytes, not UTF-32")
        return content.decode("utf-32-le").rstrip("\0")
    if kind not in _DTYPES:
        raise ValueError(f"tensor {tag!r} has the unknown type {kind[:40]!r}")
    shape = () if dims == (0,) else dims  # MindSpore's mark of a scalar
    # MindSpore writes no empty tensors: a dimension under 1 is a corrupt one.
    if len(shape) > _MAX_DIMS or min(shape, default=1) < 1:
        raise ValueError(f"tensor {tag!r} has the impossible shape {shape[:8]}")
    needed = math.prod(shape) * np.dtype(_DTYPES[kind]).itemsize
    if needed != len(content):
        raise ValueError(f"tensor {tag!r} of shape {shape[:8]} and type {kind} needs {needed} "
                         f"bytes, the file holds {len(content)}")
    return kind, shape, content


def _data(kind, shape, content):
    """What ``Parameter`` copies once: a numpy view of the bytes (a Tensor is copied twice)."""
    array = np.frombuffer(content, _DTYPES[kind]).reshape(shape)
    if kind == "BFloat16":  # widened exactly to float32, stored back as bfloat16
        return ms.Tensor((array.astype(np.uint32) << 16).view(np.float32), dtype=ms.bfloat16)
    return array
