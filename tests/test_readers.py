"""Tests for res2net_ms.convert.readers: torch/safetensors parity, safety and error reporting."""
import ast
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from res2net_ms.convert import torch_pickle
from res2net_ms.convert.readers import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    load_any,
    load_safetensors,
    load_safetensors_metadata,
    load_torch,
    save_safetensors,
)
from test_layout import modules_loaded_by

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# helpers


def _to_numpy(tensor):
    import torch

    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def _assert_same(array, tensor):
    expected = _to_numpy(tensor)
    assert isinstance(array, np.ndarray)
    assert array.dtype == expected.dtype
    assert array.shape == expected.shape
    assert array.flags.c_contiguous and array.flags.writeable
    np.testing.assert_array_equal(array, expected)


def _sample_checkpoint():
    """Nested checkpoint exercising dtypes, views, offsets and shared storage."""
    import torch

    torch.manual_seed(0)
    base = torch.randn(4, 6)
    shared = torch.arange(20, dtype=torch.float32)
    state = OrderedDict(
        fp32=torch.randn(3, 5),
        fp16=torch.randn(2, 3).half(),
        bf16=torch.randn(7).to(torch.bfloat16),
        fp64=torch.randn(2, 2, dtype=torch.float64),
        int64=torch.arange(-5, 5, dtype=torch.int64).reshape(2, 5),
        int32=torch.tensor([1, -2, 3], dtype=torch.int32),
        uint8=torch.tensor([0, 255, 7], dtype=torch.uint8),
        flag=torch.tensor([True, False, True]),
        scalar=torch.tensor(42, dtype=torch.int64),
        empty=torch.zeros(0, 3),
        transposed=base.t(),
        sliced=base[1:3, 2:5],
        strided=base[::2, 1::3],
        shared_head=shared[:8].view(2, 4),
        shared_tail=shared[10:],
        weight=torch.nn.Parameter(torch.randn(3, 3)),
        running_mean=torch.randn(4),
    )
    meta = {"epoch": 12, "arch": "res2net50_26w_4s", "tags": {"a", "b"}, "raw": b"\x00\xffok",
            "lr": [0.1, 0.01], "shape": (3, 224, 224), "nothing": None}
    return {"meta": meta, "state_dict": state}


def _check_checkpoint(loaded, original):
    assert set(loaded) == {"meta", "state_dict"}
    assert loaded["meta"] == original["meta"]
    assert isinstance(loaded["state_dict"], OrderedDict)
    assert list(loaded["state_dict"]) == list(original["state_dict"])
    for name, tensor in original["state_dict"].items():
        _assert_same(loaded["state_dict"][name], tensor)


def _pickle_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _pickle_str(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _pickle_int(value):
    return b"J" + struct.pack("<i", value)


def _pickle_tuple(*items):
    return b"(" + b"".join(items) + b"t"


def _tensor_pickle(key, numel, offset, size, stride, storage="FloatStorage", view=None):
    """Opcodes equivalent to torch's reduction of one tensor (no torch needed)."""
    fields = [_pickle_str("storage"), _pickle_global("torch", storage), _pickle_str(key),
              _pickle_str("cpu"), _pickle_int(numel)]
    if view is not None:
        view_key, view_offset, view_size = view
        fields.append(_pickle_tuple(_pickle_str(view_key), _pickle_int(view_offset),
                                    _pickle_int(view_size)))
    storage_ref = _pickle_tuple(*fields) + b"Q"
    hooks = _pickle_global("collections", "OrderedDict") + b")R"
    args = _pickle_tuple(storage_ref, _pickle_int(offset),
                         _pickle_tuple(*map(_pickle_int, size)),
                         _pickle_tuple(*map(_pickle_int, stride)), b"\x89", hooks)
    return _pickle_global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _dict_pickle(**values):
    body = b"".join(_pickle_str(k) + v + b"s" for k, v in values.items())
    return b"\x80\x02}" + body + b"."


def _system_pickle(command):
    """A pickle that runs ``os.system(command)`` when loaded by an unrestricted unpickler."""
    return _pickle_global(os.system.__module__, "system") + _pickle_str(command) + b"\x85R"


def _write_zip_checkpoint(path, data_pkl, storages, prefix="archive", byteorder="little"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", data_pkl)
        archive.writestr(f"{prefix}/byteorder", byteorder)
        for key, blob in storages.items():
            archive.writestr(f"{prefix}/data/{key}", blob)
        archive.writestr(f"{prefix}/version", "3\n")


def _assert_one_line_error(excinfo, path, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


# ---------------------------------------------------------------------------
# torch.save round trips


@pytest.mark.torch
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_round_trip(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    original = _sample_checkpoint()
    path = tmp_path / "res2net.pth"
    torch.save(original, path, _use_new_zipfile_serialization=zip_format)

    loaded = load_torch(path)

    _check_checkpoint(loaded, original)
    reference = torch.load(path, weights_only=True)
    for name, tensor in reference["state_dict"].items():
        _assert_same(loaded["state_dict"][name], tensor)


@pytest.mark.torch
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_shared_storage_gives_independent_arrays(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    shared = torch.arange(12, dtype=torch.float32)
    path = tmp_path / "shared.pt"
    torch.save({"a": shared[:6], "b": shared[3:].view(3, 3), "c": shared},
               path, _use_new_zipfile_serialization=zip_format)

    loaded = load_torch(path)

    np.testing.assert_array_equal(loaded["b"], np.arange(3, 12, dtype=np.float32).reshape(3, 3))
    loaded["a"][:] = -1
    np.testing.assert_array_equal(loaded["c"], np.arange(12, dtype=np.float32))


@pytest.mark.torch
def test_plain_state_dict_and_special_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    tagged = torch.ones(3)
    tagged.note = "tensor with python attributes"
    state = {"tagged": tagged, "u16": torch.arange(6, dtype=torch.int32).to(torch.uint16)[2:],
             "np_meta": np.float64(0.25), "np_array": np.arange(4, dtype=np.int16)}
    path = tmp_path / "special.bin"
    torch.save(state, path)

    loaded = load_torch(path)

    np.testing.assert_array_equal(loaded["tagged"], np.ones(3, np.float32))
    assert loaded["u16"].dtype == np.uint16
    np.testing.assert_array_equal(loaded["u16"], [2, 3, 4, 5])
    assert loaded["np_meta"] == np.float64(0.25) and loaded["np_meta"].dtype == np.float64
    np.testing.assert_array_equal(loaded["np_array"], np.arange(4, dtype=np.int16))


def test_handcrafted_zip_checkpoint_without_torch(tmp_path):
    path = tmp_path / "handmade.pth"
    storage = np.arange(12, dtype="<f4").tobytes()
    pickled = _dict_pickle(t=_tensor_pickle("0", 12, 1, (2, 2), (1, 4)))
    _write_zip_checkpoint(path, pickled, {"0": storage})

    loaded = load_torch(path)

    np.testing.assert_array_equal(loaded["t"], [[1, 5], [2, 6]])
    assert load_any(path).keys() == {"t"}


def test_handcrafted_big_endian_zip_checkpoint(tmp_path):
    path = tmp_path / "big_endian.pth"
    pickled = _dict_pickle(h=_tensor_pickle("0", 3, 0, (3,), (1,), storage="HalfStorage"),
                           i=_tensor_pickle("1", 2, 0, (2,), (1,), storage="IntStorage"))
    _write_zip_checkpoint(path, pickled, {"0": np.array([1.5, -2, 4], ">f2").tobytes(),
                                          "1": np.array([7, -9], ">i4").tobytes()},
                          byteorder="big")

    loaded = load_torch(path)

    assert loaded["h"].dtype == np.float16 and loaded["h"].dtype.isnative
    np.testing.assert_array_equal(loaded["h"], [1.5, -2, 4])
    np.testing.assert_array_equal(loaded["i"], [7, -9])


def test_handcrafted_legacy_checkpoint_with_storage_view(tmp_path):
    path = tmp_path / "legacy.pt"
    header = b"".join(pickle.dumps(v, protocol=2) for v in (
        torch_pickle._LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}))
    main = _dict_pickle(
        whole=_tensor_pickle("0", 6, 0, (2, 3), (3, 1), storage="LongStorage"),
        part=_tensor_pickle("0", 6, 1, (2,), (1,), storage="LongStorage", view=("v", 2, 3)))
    records = struct.pack("<q", 6) + np.arange(6, dtype="<i8").tobytes()
    path.write_bytes(header + main + pickle.dumps(["0"], protocol=2) + records)

    loaded = load_torch(path)

    np.testing.assert_array_equal(loaded["whole"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(loaded["part"], [3, 4])
    assert loaded["part"].dtype == np.int64


# ---------------------------------------------------------------------------
# refusing code in pickles


class _Exploit:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.torch
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_save_with_os_system_is_refused(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    path = tmp_path / "res2net.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": _Exploit(f"touch {marker}")},
               path, _use_new_zipfile_serialization=zip_format)

    with pytest.raises(UnsafeCheckpointError) as excinfo:
        load_torch(path)

    assert not marker.exists()
    _assert_one_line_error(excinfo, path, f"refused global '{os.system.__module__}.system'")
    assert isinstance(excinfo.value, ValueError)


def test_handcrafted_exploit_in_zip_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    _write_zip_checkpoint(path, _dict_pickle(x=_system_pickle(f"touch {marker}")), {})

    with pytest.raises(UnsafeCheckpointError) as excinfo:
        load_any(path)

    assert not marker.exists()
    _assert_one_line_error(excinfo, path, "system'")


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("__builtin__", "getattr"),
                                          ("torch", "load"), ("subprocess", "Popen")])
def test_other_dangerous_globals_are_refused(tmp_path, module, name):
    path = tmp_path / "evil.pth"
    payload = _pickle_global(module, name) + _pickle_str("1") + b"\x85R"
    _write_zip_checkpoint(path, _dict_pickle(x=payload), {})

    with pytest.raises(UnsafeCheckpointError, match=rf"refused global '[a-z_]+\.{name}'"):
        load_torch(path)


@pytest.mark.parametrize("target", [("torch", "FloatStorage"),
                                    ("torch._utils", "_rebuild_tensor_v2")])
def test_build_cannot_modify_allowed_globals(tmp_path, target):
    path = tmp_path / "tamper.pth"
    state = b"N}" + _pickle_str("value") + _pickle_str("float64") + b"s\x86"
    _write_zip_checkpoint(path, b"\x80\x02" + _pickle_global(*target) + state + b"b.", {})

    with pytest.raises(CheckpointFormatError, match="read-only"):
        load_torch(path)

    assert torch_pickle._ALLOWED_GLOBALS["torch", "FloatStorage"].value == "float32"


def test_view_outside_storage_is_rejected(tmp_path):
    path = tmp_path / "oob.pth"
    storage = np.zeros(4, dtype="<f4").tobytes()
    _write_zip_checkpoint(path, _dict_pickle(t=_tensor_pickle("0", 4, 2, (3,), (1,))),
                          {"0": storage})

    with pytest.raises(CheckpointFormatError) as excinfo:
        load_torch(path)

    _assert_one_line_error(excinfo, path, "exceeds its storage")


# ---------------------------------------------------------------------------
# corrupt torch files


@pytest.fixture()
def zip_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "res2net.pth"
    torch.save({"a": torch.ones(64), "b": torch.zeros(64), "c": torch.arange(64)}, path)
    return path


def test_truncated_zip(tmp_path, zip_checkpoint):
    data = zip_checkpoint.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointFormatError) as excinfo:
        load_torch(path)

    _assert_one_line_error(excinfo, path, "zip")


def test_zip_with_missing_storage(tmp_path, zip_checkpoint):
    path = tmp_path / "missing.pth"
    with zipfile.ZipFile(zip_checkpoint) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            if not info.filename.endswith("/data/1"):
                target.writestr(info, source.read(info))
        prefix = source.namelist()[0].split("/")[0]

    with pytest.raises(CheckpointFormatError) as excinfo:
        load_torch(path)

    _assert_one_line_error(excinfo, path, f"storage '{prefix}/data/1' is missing from the zip")


def test_zip_with_garbage_pickle(tmp_path):
    path = tmp_path / "garbage.pth"
    _write_zip_checkpoint(path, b"\x80\x02}q\x00(X\x05\x00", {})

    with pytest.raises(CheckpointFormatError) as excinfo:
        load_torch(path)

    _assert_one_line_error(excinfo, path, "bad pickle")


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")

    with pytest.raises(CheckpointFormatError, match="data.pkl"):
        load_torch(path)


@pytest.mark.torch
def test_truncated_legacy_file(tmp_path):
    torch = pytest.importorskip("torch")
    full = tmp_path / "full.pth"
    torch.save({"a": torch.ones(256)}, full, _use_new_zipfile_serialization=False)
    path = tmp_path / "legacy_truncated.pth"
    path.write_bytes(full.read_bytes()[:-100])

    with pytest.raises(CheckpointFormatError) as excinfo:
        load_torch(path)

    _assert_one_line_error(excinfo, path, "truncated")


@pytest.mark.parametrize("loader", [load_torch, load_safetensors, load_any])
def test_random_bytes(tmp_path, loader):
    path = tmp_path / "noise.pth"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())

    with pytest.raises(CheckpointFormatError) as excinfo:
        loader(path)

    _assert_one_line_error(excinfo, path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")

    with pytest.raises(CheckpointFormatError, match="empty"):
        load_torch(path)


# ---------------------------------------------------------------------------
# safetensors


def _all_dtypes():
    rng = np.random.default_rng(1)
    return {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f16": rng.standard_normal(5).astype(np.float16),
        "f64": rng.standard_normal((2, 2)),
        "i64": np.arange(-3, 3, dtype=np.int64),
        "i32": np.array([[1, 2], [3, 4]], dtype=np.int32),
        "i16": np.array([-7, 7], dtype=np.int16),
        "i8": np.array([-128, 127], dtype=np.int8),
        "u8": np.array([0, 200], dtype=np.uint8),
        "bool": np.array([True, False]),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((3, 2)).astype(np.float32)),
        "big_endian": np.arange(4, dtype=">i4"),
    }


def test_safetensors_round_trip(tmp_path):
    tensors = _all_dtypes()
    path = tmp_path / "model.safetensors"

    save_safetensors(tensors, path, metadata={"format": "np", "source": "res2net"})

    loaded = load_safetensors(path)
    assert set(loaded) == set(tensors)
    for name, array in tensors.items():
        assert loaded[name].dtype == array.dtype.newbyteorder("=")
        assert loaded[name].shape == array.shape
        np.testing.assert_array_equal(loaded[name], array)
    assert load_safetensors_metadata(path) == {"format": "np", "source": "res2net"}
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_len % 8 == 0


def test_safetensors_writer_readable_by_reference(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    safetensors = pytest.importorskip("safetensors")
    tensors = _all_dtypes()
    path = tmp_path / "model.safetensors"
    save_safetensors(tensors, path, metadata={"format": "pt"})

    reference = st_numpy.load_file(str(path))
    for name, array in tensors.items():
        np.testing.assert_array_equal(reference[name], array)
    with safetensors.safe_open(str(path), framework="np") as handle:
        assert handle.metadata() == {"format": "pt"}


@pytest.mark.torch
def test_safetensors_writer_readable_by_torch_reference(tmp_path):
    pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    tensors = _all_dtypes()
    path = tmp_path / "model.safetensors"
    save_safetensors(tensors, path)

    reference = st_torch.load_file(str(path))
    for name, array in tensors.items():
        np.testing.assert_array_equal(reference[name].numpy(), array)


@pytest.mark.torch
def test_reference_safetensors_readable(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    tensors = {
        "bf16": torch.randn(4, 3).to(torch.bfloat16),
        "fp16": torch.randn(5).half(),
        "fp32": torch.randn(2, 3, 3),
        "int64": torch.arange(10),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(1.5),
    }
    path = tmp_path / "reference.safetensors"
    st_torch.save_file(tensors, str(path), metadata={"k": "v"})

    loaded = load_safetensors(path)

    for name, tensor in tensors.items():
        _assert_same(loaded[name], tensor)
    assert loaded["bf16"].dtype == np.float32
    assert load_safetensors_metadata(path) == {"k": "v"}
    assert load_any(path).keys() == tensors.keys()


def test_save_safetensors_replaces_atomically(tmp_path):
    path = tmp_path / "model.safetensors"
    save_safetensors({"a": np.ones(3, np.float32)}, path)

    with pytest.raises(ValueError, match="complex128"):
        save_safetensors({"a": np.ones(3, np.complex128)}, path)
    np.testing.assert_array_equal(load_safetensors(path)["a"], np.ones(3, np.float32))

    save_safetensors({"b": np.zeros(2, np.int8)}, path)
    assert load_safetensors(path).keys() == {"b"}
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_truncated_safetensors(tmp_path):
    full = tmp_path / "full.safetensors"
    save_safetensors({"w": np.arange(100, dtype=np.float32)}, full)
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(full.read_bytes()[:-10])

    with pytest.raises(CheckpointFormatError) as excinfo:
        load_safetensors(path)

    _assert_one_line_error(excinfo, path, "truncated", "not fully covered")


def _raw_safetensors(path, header, data=b""):
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


# The safetensors package's own wording, each a one-line error naming the file.
@pytest.mark.parametrize("header, data, fragment", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8, "shape"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 0]}}, b"\0" * 8, "offset"),
    ({"w": {"dtype": "X9", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "X9"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "-1"),
    ({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "data_offsets"),
    ({"__metadata__": {"a": 1}}, b"", "expected a string"),
], ids=["size", "offsets", "dtype", "shape", "entry", "metadata"])
def test_invalid_safetensors_header(tmp_path, header, data, fragment):
    path = tmp_path / "bad.safetensors"
    _raw_safetensors(path, header, data)

    with pytest.raises(CheckpointFormatError) as excinfo:
        load_safetensors(path)

    _assert_one_line_error(excinfo, path, fragment)


def test_safetensors_header_not_json(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 6) + b"{nope}")

    with pytest.raises(CheckpointFormatError, match="invalid JSON"):
        load_safetensors(path)


# ---------------------------------------------------------------------------
# dispatch and isolation


def test_load_any_dispatches_on_content(tmp_path):
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    path = tmp_path / "weights.dat"
    save_safetensors(tensors, path)
    np.testing.assert_array_equal(load_any(path)["w"], tensors["w"])

    zip_path = tmp_path / "weights.ckpt"
    _write_zip_checkpoint(zip_path, _dict_pickle(t=_tensor_pickle("0", 2, 0, (2,), (1,))),
                          {"0": np.ones(2, "<f4").tobytes()})
    np.testing.assert_array_equal(load_any(zip_path)["t"], np.ones(2, np.float32))


def test_load_any_safetensors_header_starting_like_a_pickle(tmp_path):
    path = tmp_path / "weights.safetensors"
    header = json.dumps({"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}).encode()
    header = header.ljust(0x80)
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x01\x02")
    assert path.read_bytes()[0] == 0x80

    np.testing.assert_array_equal(load_any(path)["w"], [1, 2])


def test_load_any_unknown_content(tmp_path):
    mindspore_like = tmp_path / "res2net.ckpt"
    mindspore_like.write_bytes(b"\x0a\x0c\x0a\x04name" + bytes(64))
    with pytest.raises(CheckpointFormatError, match="MindSpore loader"):
        load_any(mindspore_like)

    unknown = tmp_path / "notes.txt"
    unknown.write_text("hello world, not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="unrecognised checkpoint format"):
        load_any(unknown)


def test_import_does_not_load_torch():
    assert modules_loaded_by("import res2net_ms.convert.readers", ("torch",)) == []


def test_module_imports_only_numpy_and_stdlib():
    """The restricted unpickler runs on numpy and the standard library alone."""
    stdlib = getattr(sys, "stdlib_module_names", None)
    if stdlib is None:
        pytest.skip("sys.stdlib_module_names needs Python 3.10+")
    tree = ast.parse(Path(torch_pickle.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:  # package-relative: ours
            imported.add(node.module.split(".")[0])
    third_party = imported - set(stdlib)
    assert third_party == {"numpy"}


def test_errors_are_value_errors():
    assert issubclass(CheckpointFormatError, ValueError)
    assert issubclass(UnsafeCheckpointError, ValueError)


# ---------------------------------------------------------------------------
# MindSpore .ckpt (res2net_ms.ckpt): checked before anything is built from it


def _ms_types():
    import mindspore as ms

    rng = np.random.default_rng(2)
    arrays = {"f32": rng.standard_normal((3, 4)).astype(np.float32),
              "f16": rng.standard_normal(5).astype(np.float16),
              "f64": rng.standard_normal((2, 1, 2)), "i64": np.arange(-3, 3, dtype=np.int64),
              "i32": np.array([[1, 2]], dtype=np.int32), "i16": np.array([-7, 7], np.int16),
              "i8": np.array([-128, 127], np.int8), "u8": np.array([0, 200], np.uint8),
              "u16": np.array([65535], np.uint16), "u32": np.array([7], np.uint32),
              "u64": np.array([2 ** 63], np.uint64), "bool": np.array([True, False]),
              "scalar": np.array(3.5, np.float32)}
    tensors = {k: ms.Tensor(v) for k, v in arrays.items()}
    tensors["bf16"] = ms.Tensor(np.array([1.5, -2.25, 3e38], np.float32), dtype=ms.bfloat16)
    return tensors


def _ckpt_records(path):
    """The entries of a .ckpt, each as its own one-entry checkpoint message (the file is their
    concatenation)."""
    from mindspore.train.checkpoint_pb2 import Checkpoint

    whole = Checkpoint()
    whole.ParseFromString(Path(path).read_bytes())
    records = []
    for value in whole.value:
        one = Checkpoint()
        one.value.add().CopyFrom(value)
        records.append(one)
    return records


def _write_records(path, records, tail=b""):
    Path(path).write_bytes(b"".join(r.SerializeToString() for r in records) + tail)
    return path


def _small_ckpt(tmp_path):
    from res2net_ms.ckpt import save_ckpt

    path = tmp_path / "small.ckpt"
    save_ckpt({"conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
               "step": np.array(3, np.int64)}, path, append_dict={"meta.model": "res2net50"})
    return path


@pytest.mark.parametrize("crc", [False, True])
def test_ckpt_reader_reads_what_mindspore_reads(tmp_path, crc):
    import mindspore as ms

    from res2net_ms.ckpt import load_ckpt

    path = str(tmp_path / "types.ckpt")
    items = [{"name": k, "data": v} for k, v in _ms_types().items()]
    ms.save_checkpoint(items, path, append_dict={"epoch": 4, "lr": 0.25, "note": "über 3°"},
                       crc_check=crc)
    assert (Path(path).read_bytes()[-17:-10] == b"crc_num") == crc
    ours, theirs = load_ckpt(path), ms.load_checkpoint(path)
    assert list(ours) == list(theirs) and len(ours) == 17
    for name, want in theirs.items():
        got = ours[name]
        if isinstance(want, str):
            assert got == want
            continue
        assert (got.name, got.dtype, got.shape) == (want.name, want.dtype, want.shape), name
        if want.dtype == ms.bfloat16:
            got, want = got.float(), want.float()
        np.testing.assert_array_equal(got.asnumpy(), want.asnumpy(), err_msg=name)
    assert ours["note"] == "über 3°" and ours["epoch"].asnumpy() == 4
    assert set(load_ckpt(path, names={"f16", "note", "absent"})) == {"f16", "note"}


def test_ckpt_reader_joins_a_tensor_split_over_entries(tmp_path):
    """MindSpore writes a tensor over 512 MB as consecutive entries of one name."""
    import mindspore as ms

    from res2net_ms.ckpt import load_ckpt

    weight, step = _ckpt_records(_small_ckpt(tmp_path))[:2]
    halves = []
    for part in (slice(0, 40), slice(40, None)):
        half = type(weight)()
        half.CopyFrom(weight)
        half.value[0].tensor.tensor_content = weight.value[0].tensor.tensor_content[part]
        halves.append(half)
    path = _write_records(tmp_path / "split.ckpt", [*halves, step])
    got = load_ckpt(path)["conv.weight"].asnumpy()
    np.testing.assert_array_equal(got, np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2))
    np.testing.assert_array_equal(got, ms.load_checkpoint(str(path))["conv.weight"].asnumpy())


def _corrupt(tmp_path, kind):
    """A copy of a small valid checkpoint with one kind of damage."""
    path = _small_ckpt(tmp_path)
    records = _ckpt_records(path)
    tensor = records[0].value[0].tensor
    data = path.read_bytes()
    if kind == "truncated":
        return _write_records(tmp_path / "bad.ckpt", [], data[:len(data) // 2])
    if kind == "empty":
        return _write_records(tmp_path / "bad.ckpt", [])
    if kind == "crc":
        import mindspore as ms

        with_crc = tmp_path / "crc.ckpt"
        ms.save_checkpoint([{"name": "w", "data": ms.Tensor(np.ones(8, np.float32))}],
                           str(with_crc), crc_check=True)
        damaged = bytearray(with_crc.read_bytes())
        damaged[-20] ^= 0x40  # a byte of the tensor's content
        return _write_records(tmp_path / "bad.ckpt", [], bytes(damaged))
    if kind == "unknown field":  # the first entry's field number damaged
        data = b"\x12" + data[1:]
        return _write_records(tmp_path / "bad.ckpt", [], data)
    if kind == "wrong length":
        tensor.tensor_content = tensor.tensor_content[:-4]
    elif kind == "wrong shape":
        tensor.dims[0] = 3
    elif kind == "huge dimension":
        tensor.dims[1] = 2 ** 62
    elif kind == "negative dimension":
        tensor.dims[1] = -3
    elif kind == "unknown type":
        tensor.tensor_type = "Float31"
    elif kind == "string":
        records[2].value[0].tensor.tensor_content += b"\x01"
    elif kind == "map parameter":
        records[0].value[0].maptensor.tensor.add().CopyFrom(tensor)
    return _write_records(tmp_path / "bad.ckpt", records)


@pytest.mark.parametrize("kind, fragment", [
    ("truncated", "Truncated"), ("empty", "holds no tensors"), ("crc", "CRC-32"),
    ("unknown field", "fields a checkpoint does not have"),
    ("wrong length", "'conv.weight' of shape (2, 3, 2, 2) and type Float32 needs 96 bytes, "
                     "the file holds 92"),
    ("wrong shape", "needs 144 bytes, the file holds 96"),
    ("huge dimension", "needs 147573952589676412928 bytes"),
    ("negative dimension", "impossible shape (2, -3, 2, 2)"),
    ("unknown type", "unknown type 'Float31'"), ("string", "not UTF-32"),
    ("map parameter", "not a tensor")])
def test_corrupt_ckpt_is_one_line(tmp_path, kind, fragment):
    from res2net_ms.ckpt import CheckpointReadError, load_ckpt

    path = _corrupt(tmp_path, kind)
    with pytest.raises(CheckpointReadError) as excinfo:
        load_ckpt(path)
    _assert_one_line_error(excinfo, path, "not a readable MindSpore checkpoint", fragment,
                           "truncated, corrupt or of another format")


@pytest.mark.slow
def test_ckpt_that_breaks_mindspores_loader_is_one_line_in_the_cli(tmp_path):
    """A shape that claims fewer bytes than stored: MindSpore's own loader corrupts the heap
    (the process aborts) or builds a tensor of the wrong size; ours names the file and the
    tensor, and the converter's command line ends with one ``error:`` line."""
    records = _ckpt_records(_small_ckpt(tmp_path))
    records[0].value[0].tensor.dims[0] = 1  # 48 of the 96 bytes
    path = _write_records(tmp_path / "bad.ckpt", records)
    probe = ("import sys, mindspore as ms; "
             "print(ms.load_checkpoint(sys.argv[1])['conv.weight'].shape, flush=True)")
    mindspore = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True,
                               text=True, timeout=300)
    assert mindspore.returncode < 0 or "(1, 3, 2, 2)" in mindspore.stdout, mindspore.stderr
    cli = subprocess.run([sys.executable, "-m", "res2net_ms.convert", str(path), "--model",
                          "res2net50", "--out", str(tmp_path / "out.ckpt")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2, cli.stderr[-2000:]
    (line,) = [ln for ln in cli.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: ") and str(path) in line
    assert "'conv.weight' of shape (1, 3, 2, 2) and type Float32 needs 48 bytes" in line
    assert not (tmp_path / "out.ckpt").exists()


def test_the_package_reads_ckpt_files_only_through_load_ckpt():
    """MindSpore's loader trusts the file: no module but ``ckpt.py`` may call it."""
    callers = []
    for source in (REPO / "res2net_ms").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            name = next((getattr(node, a) for a in ("attr", "id", "name")
                         if isinstance(getattr(node, a, None), str)), None)
            if name in ("load_checkpoint", "load_checkpoint_async"):
                callers.append(str(source.relative_to(REPO)))
    assert callers == [], callers
