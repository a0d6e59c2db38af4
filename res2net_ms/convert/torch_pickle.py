"""Read ``torch.save`` files (zip and legacy formats) into numpy without importing torch.

Converting weights must not require torch, and must not execute code from a downloaded
checkpoint. PyTorch files are pickles, so they are read with a restricted unpickler whose
allow-list maps every accepted global to a small local re-implementation; any other global is
refused before it can run. The ``safetensors`` package has no counterpart for pickles, hence
this module.
"""
import contextlib
import io
import mmap
import os
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

from .errors import CheckpointFormatError, UnsafeCheckpointError

__all__ = ["ZIP_MAGIC", "load_torch", "read_torch_file", "bf16_to_f32"]


class _Corrupt(Exception):
    """Internal: a format problem whose message still lacks the file name."""


@contextlib.contextmanager
def _format_errors(source):
    """Turn internal format problems into one-line errors naming the file."""
    try:
        yield
    except _Corrupt as exc:
        raise CheckpointFormatError(f"{source}: {exc}") from exc.__cause__


def _one_line(exc, limit=200):
    """Summarise a foreign exception so that error messages stay on one line."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------
# Element types

# torch dtype name -> numpy type code of the stored element (bfloat16 is
# stored as raw 16-bit patterns and widened to float32 on decode).
_TORCH_DTYPES = {
    "float64": "f8",
    "float32": "f4",
    "float16": "f2",
    "bfloat16": "u2",
    "int64": "i8",
    "int32": "i4",
    "int16": "i2",
    "int8": "i1",
    "uint8": "u1",
    "uint16": "u2",
    "uint32": "u4",
    "uint64": "u8",
    "bool": "?",
    "complex64": "c8",
    "complex128": "c16",
}

_STORAGE_CLASSES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
}


def _itemsize(dtype_name):
    return np.dtype(_TORCH_DTYPES[dtype_name]).itemsize


def bf16_to_f32(bits):
    """bfloat16 is the upper half of a float32, so widening is a shift."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _decode(raw, dtype_name, byteorder):
    """Interpret raw storage bytes as a 1-D native-endian numpy array."""
    stored = np.dtype(_TORCH_DTYPES[dtype_name]).newbyteorder(byteorder)
    if len(raw) % stored.itemsize:
        raise _Corrupt(f"storage of {len(raw)} bytes is not a whole number of "
                       f"{dtype_name} elements")
    flat = np.frombuffer(raw, dtype=stored)
    if dtype_name == "bfloat16":
        return bf16_to_f32(flat)
    return flat.astype(stored.newbyteorder("="), copy=False)


# ---------------------------------------------------------------------------
# Objects handed to the pickle machine


class _Frozen:
    """Base for objects a hostile pickle can reach: BUILD must not alter them."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only")

    __delattr__ = __setattr__


class _Token(_Frozen):
    """Stand-in for a torch/numpy class or dtype named by the pickle."""

    __slots__ = ("role", "value")

    def __init__(self, role, value):
        object.__setattr__(self, "role", role)
        object.__setattr__(self, "value", value)

    def __repr__(self):
        return f"<{self.role} {self.value}>"


class _Call(_Frozen):
    """An allowed global callable, bound to a safe local implementation."""

    __slots__ = ("name", "fn")

    def __init__(self, name, fn):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self):
        return f"<allowed {self.name}>"


class _Storage(_Frozen):
    """A torch storage: raw bytes (None while only the layout is known)."""

    __slots__ = ("dtype_name", "raw", "byteorder", "_decoded")

    def __init__(self, dtype_name, raw, byteorder="<"):
        object.__setattr__(self, "dtype_name", dtype_name)
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "byteorder", byteorder)
        object.__setattr__(self, "_decoded", {})

    def elements(self, dtype_name):
        """The storage as a flat array of ``dtype_name``, decoded once per dtype."""
        if self.raw is None:
            return None
        if dtype_name not in self._decoded:
            self._decoded[dtype_name] = _decode(self.raw, dtype_name, self.byteorder)
        return self._decoded[dtype_name]


def _int_tuple(value, what):
    if not isinstance(value, tuple) or not all(type(v) is int for v in value):
        raise _Corrupt(f"tensor {what} must be a tuple of ints, got {type(value).__name__}")
    return value


def _tensor_from_storage(storage, dtype_name, offset, size, stride):
    """Rebuild a (possibly strided, offset) tensor view as an owned C-contiguous copy.

    ``dtype_name`` None means the storage's own element type.  The copy keeps
    tensors that shared a storage independent, and bounds are checked before
    ``as_strided`` so a hostile layout cannot read outside the storage.
    """
    if not isinstance(storage, _Storage):
        raise _Corrupt(f"tensor data must come from a storage record, got {type(storage).__name__}")
    size = _int_tuple(size, "size")
    stride = _int_tuple(stride, "stride")
    if type(offset) is not int or offset < 0 or len(size) != len(stride):
        raise _Corrupt(f"bad tensor layout: offset={offset!r} size={size} stride={stride}")
    if any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise _Corrupt(f"bad tensor layout: negative size or stride in {size}/{stride}")
    flat = storage.elements(dtype_name or storage.dtype_name)
    if flat is None:
        return None
    if 0 in size:
        return np.zeros(size, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise _Corrupt(f"tensor view (offset {offset}, size {size}, stride {stride}) "
                       f"exceeds its storage of {flat.size} elements")
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride], writeable=False)
    return view.copy(order="C")


def _rebuild_tensor(storage, offset, size, stride, *_unused):
    """torch._utils._rebuild_tensor / _rebuild_tensor_v2: grad flags and hooks are dropped."""
    return _tensor_from_storage(storage, None, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, _requires_grad, _hooks, dtype, *_unused):
    """torch._utils._rebuild_tensor_v3: an untyped byte storage viewed as ``dtype``."""
    if not isinstance(dtype, _Token) or dtype.role != "dtype":
        raise _Corrupt(f"expected a torch dtype, got {dtype!r:.60}")
    return _tensor_from_storage(storage, dtype.value, offset, size, stride)


def _rebuild_parameter(data, *_unused):
    """torch._utils._rebuild_parameter(_with_state): a Parameter is just its data here."""
    return data


def _rebuild_from_type_v2(func, new_type, args, _state):
    """torch._tensor._rebuild_from_type_v2: used for tensors carrying Python attributes."""
    if not (isinstance(func, _Call) and func.fn in _TENSOR_REBUILDERS):
        raise _Corrupt(f"unexpected tensor rebuild function {func!r:.60}")
    if not (isinstance(new_type, _Token) and new_type.role == "tensor type"):
        raise _Corrupt(f"unexpected tensor type {new_type!r:.60}")
    if not isinstance(args, tuple):
        raise _Corrupt("tensor rebuild arguments must be a tuple")
    return func(*args)


_TENSOR_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter)


def _codecs_encode(text, encoding="utf-8"):
    """Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1')."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Corrupt(f"unsupported _codecs.encode call with encoding {encoding!r:.30}")
    return text.encode("latin1")


def _bytes_like(kind):
    def build(source=b"", encoding=None):
        if isinstance(source, str) and encoding in ("latin1", "latin-1"):
            source = source.encode("latin1")
        if not isinstance(source, (bytes, bytearray)):
            raise _Corrupt(f"unsupported {kind.__name__} argument of type {type(source).__name__}")
        return kind(source)

    return build


def _ordered_dict(items=()):
    return OrderedDict(items)


def _torch_size(dims=()):
    return tuple(dims)


def _np_reconstruct(cls, shape, _typecode):
    """numpy's array unpickling entry point; the data arrives via ndarray.__setstate__."""
    if not (isinstance(cls, _Token) and cls.role == "numpy class") or shape != (0,):
        raise _Corrupt("unexpected numpy array reconstruction arguments")
    return np.ndarray((0,), dtype=np.uint8)


def _np_dtype(spec, _align=False, _copy=False):
    if not isinstance(spec, str):
        raise _Corrupt(f"unexpected numpy dtype spec {spec!r:.40}")
    return np.dtype(spec)


def _np_scalar(dtype, data=None):
    """numpy scalars (e.g. best scores in training meta) are a dtype plus raw bytes."""
    if not isinstance(dtype, np.dtype):
        raise _Corrupt("numpy scalar without a dtype")
    if dtype.hasobject:
        return data
    if isinstance(data, str):
        data = data.encode("latin1")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _Corrupt("numpy scalar with malformed data")
    return np.frombuffer(data, dtype=dtype)[0]


def _allow_list():
    allowed = {
        ("collections", "OrderedDict"): _Call("collections.OrderedDict", _ordered_dict),
        ("torch._utils", "_rebuild_tensor"): _Call("_rebuild_tensor", _rebuild_tensor),
        ("torch._utils", "_rebuild_tensor_v2"): _Call("_rebuild_tensor_v2", _rebuild_tensor),
        ("torch._utils", "_rebuild_tensor_v3"): _Call("_rebuild_tensor_v3", _rebuild_tensor_v3),
        ("torch._utils", "_rebuild_parameter"): _Call("_rebuild_parameter", _rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"):
            _Call("_rebuild_parameter_with_state", _rebuild_parameter),
        ("torch._tensor", "_rebuild_from_type_v2"):
            _Call("_rebuild_from_type_v2", _rebuild_from_type_v2),
        ("torch", "Tensor"): _Token("tensor type", "Tensor"),
        ("torch", "Size"): _Call("torch.Size", _torch_size),
        ("torch.storage", "UntypedStorage"): _Token("storage", "uint8"),
        ("torch", "UntypedStorage"): _Token("storage", "uint8"),
        ("builtins", "set"): _Call("set", set),
        ("builtins", "frozenset"): _Call("frozenset", frozenset),
        ("builtins", "slice"): _Call("slice", slice),
        ("builtins", "bytes"): _Call("bytes", _bytes_like(bytes)),
        ("builtins", "bytearray"): _Call("bytearray", _bytes_like(bytearray)),
        ("_codecs", "encode"): _Call("_codecs.encode", _codecs_encode),
    }
    for cls, dtype_name in _STORAGE_CLASSES.items():
        allowed["torch", cls] = _Token("storage", dtype_name)
    for dtype_name in _TORCH_DTYPES:
        allowed["torch", dtype_name] = _Token("dtype", dtype_name)
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[core, "_reconstruct"] = _Call("numpy _reconstruct", _np_reconstruct)
        allowed[core, "scalar"] = _Call("numpy scalar", _np_scalar)
    allowed["numpy", "ndarray"] = _Token("numpy class", "ndarray")
    allowed["numpy", "dtype"] = _Call("numpy.dtype", _np_dtype)
    return allowed


_ALLOWED_GLOBALS = _allow_list()

# Protocol-2 pickles written by Python 2 name the builtins module differently.
_MODULE_ALIASES = {"__builtin__": "builtins"}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals only through the allow-list."""

    def __init__(self, file, source, load_storage):
        super().__init__(file, encoding="utf-8")
        self._source = source
        self._load_storage = load_storage

    def find_class(self, module, name):
        module = _MODULE_ALIASES.get(module, module)
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise UnsafeCheckpointError(
                f"refused global '{module}.{name}' in {self._source}: "
                "only tensors, dicts and plain values are allowed")
        return target

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise _Corrupt(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not (isinstance(storage_type, _Token) and storage_type.role == "storage"):
            raise _Corrupt(f"unknown storage type {storage_type!r:.60}")
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise _Corrupt(f"malformed storage reference {pid!r:.80}")
        if self._load_storage is None:
            raise _Corrupt("unexpected storage reference in a header pickle")
        return self._load_storage(key, storage_type.value, numel, view)


def _unpickle(file, source, what, load_storage=None):
    """Run the restricted unpickler; any failure becomes a one-line format error."""
    try:
        return _RestrictedUnpickler(file, source, load_storage).load()
    except (UnsafeCheckpointError, _Corrupt):
        raise
    except Exception as exc:
        raise _Corrupt(f"bad pickle in {what} ({_one_line(exc)})") from exc


# ---------------------------------------------------------------------------
# PyTorch files

ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
               struct.error, NotImplementedError, RuntimeError, zlib.error)


def load_torch(path):
    """Load a ``torch.save`` file (zip or legacy format) with tensors as numpy arrays.

    Returns the saved object structure (e.g. a state dict, or a dict holding
    ``meta`` and ``state_dict``).  bfloat16 tensors become float32 arrays.
    """
    source = os.fspath(path)
    with _format_errors(source), open(path, "rb") as f:
        head = f.read(512)
        f.seek(0)
        if head.startswith(ZIP_MAGIC):
            return _load_torch_zip(f, source)
        if len(head) > 262 and head[257:262] == b"ustar":
            raise _Corrupt("tar-format checkpoints (PyTorch < 0.4) are not supported")
        if not head:
            raise _Corrupt("file is empty")
        return _load_torch_legacy(f, source)


read_torch_file = load_torch


# Deflate expands at most about 1032 times; anything claiming more is not a real checkpoint.
_MAX_DEFLATE_RATIO = 1032


def _zip_read(archive, name, file_size):
    """Read one record, refusing sizes its compressed bytes or the file (``file_size``
    bytes) cannot hold: a header claiming terabytes must not make us allocate them."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise _Corrupt(f"record '{name}' is missing from the zip "
                       "(truncated or corrupt checkpoint)") from None
    limit = info.compress_size * (_MAX_DEFLATE_RATIO if info.compress_type else 1)
    if info.file_size > limit or info.compress_size > file_size:
        raise _Corrupt(f"record '{name}' claims {info.file_size} bytes, more than its "
                       f"{info.compress_size} stored bytes can hold")
    try:
        return archive.read(name)
    except KeyError:
        raise _Corrupt(f"record '{name}' is missing from the zip "
                       "(truncated or corrupt checkpoint)") from None
    except _ZIP_ERRORS as exc:
        raise _Corrupt(f"cannot read record '{name}' ({_one_line(exc)})") from exc


def _load_torch_zip(f, source):
    try:
        archive = zipfile.ZipFile(f)
    except _ZIP_ERRORS as exc:
        raise _Corrupt("not a readable zip archive, probably truncated "
                       f"({_one_line(exc)})") from exc
    with archive:
        file_size = os.fstat(f.fileno()).st_size
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise _Corrupt("zip has no '<archive>/data.pkl' record: not a torch.save checkpoint")
        prefix = pickles[0][: -len("/data.pkl")]
        byteorder = "<"
        if f"{prefix}/byteorder" in archive.namelist():
            order = _zip_read(archive, f"{prefix}/byteorder", file_size).strip()
            if order not in (b"little", b"big"):
                raise _Corrupt(f"unknown byte order {order[:20]!r}")
            byteorder = "<" if order == b"little" else ">"
        storages = {}

        def load_storage(key, dtype_name, numel, view):
            if view is not None:
                raise _Corrupt("storage views are not expected in zip checkpoints")
            if key not in storages:
                name = f"{prefix}/data/{key}"
                expected = numel * _itemsize(dtype_name)
                try:
                    size = archive.getinfo(name).file_size
                except KeyError:
                    raise _Corrupt(f"storage '{name}' is missing from the zip "
                                   "(truncated or corrupt checkpoint)") from None
                if size != expected:
                    raise _Corrupt(f"storage '{name}' holds {size} bytes, expected {expected}")
                storages[key] = _Storage(dtype_name, _zip_read(archive, name, file_size),
                                         byteorder)
            return storages[key]

        data = _zip_read(archive, f"{prefix}/data.pkl", file_size)
        return _unpickle(io.BytesIO(data), source, f"'{prefix}/data.pkl'", load_storage)


def _load_torch_legacy(f, source):
    """Legacy format: magic, protocol, sys_info, object, storage keys, then raw storages."""
    file_size = os.fstat(f.fileno()).st_size
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        try:
            magic = _unpickle(mm, source, "the header")
        except _Corrupt:
            magic = None
        if magic != _LEGACY_MAGIC:
            raise _Corrupt("not a PyTorch checkpoint "
                           "(neither a zip archive nor a legacy torch.save file)")
        protocol = _unpickle(mm, source, "the header")
        if protocol != _LEGACY_PROTOCOL:
            raise _Corrupt(f"unsupported legacy protocol version {protocol!r:.40}")
        sys_info = _unpickle(mm, source, "the header")
        if not isinstance(sys_info, dict):
            raise _Corrupt("malformed legacy sys_info record")
        byteorder = "<" if sys_info.get("little_endian", True) else ">"

        layouts = {}

        def record_layout(key, dtype_name, numel, view):
            layouts.setdefault(key, (dtype_name, numel))
            return _Storage(dtype_name, None)

        object_start = mm.tell()
        _unpickle(mm, source, "the main pickle", record_layout)
        keys = _unpickle(mm, source, "the storage key list")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _Corrupt("malformed storage key list")
        raw = {}
        for key in keys:
            if key not in layouts:
                raise _Corrupt(f"storage '{key}' is listed but never used")
            dtype_name, numel = layouts[key]
            count_bytes = mm.read(8)
            if len(count_bytes) != 8:
                raise _Corrupt(f"file ends before storage '{key}' (truncated checkpoint)")
            (count,) = struct.unpack(byteorder + "q", count_bytes)
            if count != numel:
                raise _Corrupt(f"storage '{key}' has {count} elements, expected {numel}")
            nbytes = count * _itemsize(dtype_name)
            if mm.tell() + nbytes > file_size:
                raise _Corrupt(f"file ends inside storage '{key}' (truncated checkpoint)")
            raw[key] = mm.read(nbytes)
        missing = sorted(set(layouts) - set(raw))
        if missing:
            raise _Corrupt(f"storage '{missing[0]}' has no data record "
                           "(truncated or corrupt checkpoint)")

        storages = {}

        def load_storage(key, dtype_name, numel, view):
            base = storages.setdefault(key, _Storage(dtype_name, raw[key], byteorder))
            if view is None:
                return base
            if not (isinstance(view, tuple) and len(view) == 3):
                raise _Corrupt(f"malformed storage view {view!r:.60}")
            view_key, start, length = view
            if view_key not in storages:
                itemsize = _itemsize(dtype_name)
                if not (type(start) is int and type(length) is int and 0 <= start
                        and 0 <= length and start + length <= numel):
                    raise _Corrupt(f"storage view {view!r:.60} exceeds storage '{key}'")
                chunk = base.raw[start * itemsize: (start + length) * itemsize]
                storages[view_key] = _Storage(dtype_name, chunk, byteorder)
            return storages[view_key]

        mm.seek(object_start)
        return _unpickle(mm, source, "the main pickle", load_storage)
