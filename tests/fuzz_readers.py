"""Fuzzing of the checkpoint readers, run by ``test_fuzz.py`` in a child process with a memory
limit, so that a crash (an abort in MindSpore), a hang or a runaway allocation fails the test
instead of the suite.

``python tests/fuzz_readers.py torch|ckpt SEED_DIR WORK_DIR EXAMPLES`` prints one line per
strategy: ``<name> <cases> <refused>``; it exits non-zero on the first input that raised
anything but the readers' own one-line errors, that made the reader run code (an audit hook
watches), or that loaded although it was made corrupt on purpose.
"""
import json
import os
import struct
import sys
import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mindspore.train.checkpoint_pb2 import Checkpoint

from res2net_ms.ckpt import CheckpointReadError, load_ckpt
from res2net_ms.convert.errors import CheckpointFormatError, UnsafeCheckpointError
from res2net_ms.convert.readers import load_any

# What loading a checkpoint must never do.
FORBIDDEN = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "subprocess.Popen",
             "ctypes.dlopen", "socket.connect", "os.remove", "os.rename", "shutil.rmtree")
_watching = []


def _audit(event, args):
    if _watching and event.startswith(FORBIDDEN):
        _watching.append(event)


def check(work_dir, data, suffix, must_refuse=False):
    """Load ``data`` as a file: a result, or one of our one-line errors naming the file.

    Returns whether the file was refused."""
    path = os.path.join(work_dir, "case" + suffix)
    with open(path, "wb") as f:
        f.write(data)
    read = load_ckpt if suffix == ".ckpt" else load_any
    _watching[:] = [True]
    refused = True
    try:
        read(path)
        refused = False
    except (CheckpointFormatError, UnsafeCheckpointError, CheckpointReadError) as exc:
        message = str(exc)
        assert "\n" not in message and path in message, message
    finally:
        ran = _watching[1:]
        _watching.clear()
    assert not ran, f"loading ran {ran}"
    assert refused or not must_refuse, "a checkpoint damaged on purpose loaded"
    return refused


def mutate(seed, edits, cut):
    data = bytearray(seed)
    for position, value in edits:
        if data:
            data[position % len(data)] = value
    return bytes(data[:cut % (len(data) + 1)] if cut is not None else data)


def safetensors_file(header, payload):
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + payload


_dtype = st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "X9", 7, None])
_size = st.one_of(st.integers(0, 64), st.integers(0, 2 ** 62), st.integers(-5, -1))
_entry = st.fixed_dictionaries({
    "dtype": _dtype,
    "shape": st.lists(_size, max_size=4),
    "data_offsets": st.lists(_size, min_size=0, max_size=3),
})
_header = st.dictionaries(st.text(max_size=8), st.one_of(_entry, st.integers(), st.text()),
                          max_size=4)


def main(kind, seed_dir, work_dir, examples):
    sys.addaudithook(_audit)
    config = settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
    counts = {}

    def run(name, test):
        counts[name] = [0, 0]
        inner = test.hypothesis.inner_test

        def counted(*args, **kwargs):
            counts[name][0] += 1
            counts[name][1] += bool(inner(*args, **kwargs))
        test.hypothesis.inner_test = counted
        config(test)()

    {"torch": fuzz_torch_readers, "ckpt": fuzz_ckpt}[kind](seed_dir, work_dir, run)
    for name, (cases, refused) in counts.items():
        print(f"{name} {cases} {refused}", flush=True)


def fuzz_torch_readers(seed_dir, work_dir, run):
    seeds = {name: open(os.path.join(seed_dir, name), "rb").read()
             for name in sorted(os.listdir(seed_dir))}
    edits = st.lists(st.tuples(st.integers(0, 2 ** 31), st.integers(0, 255)), max_size=12)
    cuts = st.one_of(st.none(), st.integers(0, 2 ** 31))
    for seed_name, seed in seeds.items():
        run(f"mutated {seed_name}", given(edits, cuts)(_mutated(work_dir, seed, seed_name)))

    @given(st.binary(max_size=512), st.sampled_from([".pth", ".bin", ".safetensors", ".pt"]))
    def random_bytes(data, suffix):
        return check(work_dir, data, suffix)

    @given(st.binary(max_size=256))
    def random_pickles(body):
        return check(work_dir, _zip_with_pickle(b"\x80\x02" + body), ".pth")

    @given(st.binary(max_size=256))
    def legacy_pickles(body):  # after the legacy magic number's pickle
        return check(work_dir, b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19." + body, ".pth")

    @given(_header, st.binary(max_size=64))
    def safetensors_headers(header, payload):
        return check(work_dir, safetensors_file(header, payload), ".safetensors")

    for test in (random_bytes, random_pickles, legacy_pickles, safetensors_headers):
        run(test.__name__.replace("_", " "), test)


def _mutated(work_dir, seed, name):
    def case(edits, cut):
        return check(work_dir, mutate(seed, edits, cut), os.path.splitext(name)[1])
    return case


def _zip_with_pickle(pickled):
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", b"\0" * 16)
    return buffer.getvalue()


# MindSpore's tensor types and their item sizes.
_ITEM = {"Int8": 1, "UInt8": 1, "Bool": 1, "Int16": 2, "UInt16": 2, "Float16": 2, "BFloat16": 2,
         "Int32": 4, "UInt32": 4, "Float32": 4, "Int64": 8, "UInt64": 8, "Float64": 8}
_WINDOW_BYTES = 1 << 20


def fuzz_ckpt(seed_dir, work_dir, run):
    """Damaged copies of real checkpoints (the test gives a training and a converted one).

    A case starts from a window of consecutive entries of a seed: a valid checkpoint itself,
    the file being a concatenation of one-entry messages, and small enough for many cases.
    Random edits may leave a loadable file; truncations inside an entry, wrong byte counts,
    wrong shapes, huge or negative dimensions and wrong types must all be refused.
    """
    for seed_name in sorted(os.listdir(seed_dir)):
        records, kinds = _records(os.path.join(seed_dir, seed_name))
        label = os.path.splitext(seed_name)[0]
        tensors = [i for i, kind in enumerate(kinds) if kind != "str"]
        strings = [i for i, kind in enumerate(kinds) if kind == "str"] or tensors
        windows = st.tuples(st.one_of(st.integers(0, len(records) - 1), st.sampled_from(strings)),
                            st.integers(1, 6))
        around = st.tuples(st.sampled_from(tensors), st.integers(0, 2), st.integers(0, 2))

        def window(start, count):
            chosen = [records[start]]
            for record in records[start + 1:start + count]:
                if sum(map(len, chosen)) + len(record) > _WINDOW_BYTES:
                    break
                chosen.append(record)
            return chosen

        def damaged(target, before, after, change):
            """The window around ``target`` with ``change`` made to the target's tensor."""
            message = Checkpoint()
            message.ParseFromString(records[target])
            change(message.value[0].tensor)
            return b"".join(records[max(0, target - before):target]) + \
                message.SerializeToString() + b"".join(records[target + 1:target + 1 + after])

        @given(windows, st.lists(st.tuples(st.integers(0, 2 ** 31), st.integers(0, 255)),
                                 min_size=1, max_size=8),
               st.one_of(st.none(), st.integers(0, 2 ** 31)))
        def mutated(span, edits, cut):
            return check(work_dir, mutate(b"".join(window(*span)), edits, cut), ".ckpt")

        @given(windows, st.integers(0, 2 ** 31), st.integers(0, 2 ** 31))
        def truncated(span, which, offset):  # cut strictly inside one entry
            chosen = window(*span)
            k = which % len(chosen)
            cut = 1 + offset % (len(chosen[k]) - 1)
            return check(work_dir, b"".join(chosen[:k]) + chosen[k][:cut], ".ckpt", True)

        @given(around, st.one_of(st.integers(-16, 16).filter(bool).map(lambda n: ("bytes", n)),
                                 st.tuples(st.just("dim"), st.integers(0, 7),
                                           st.integers(1, 4096))))
        def wrong_length(place, change):
            def apply(tensor):
                if change[0] == "bytes":
                    n = change[1]
                    content = tensor.tensor_content
                    tensor.tensor_content = content[:n] if n < 0 else content + bytes(n)
                elif not tensor.dims:
                    tensor.dims.append(change[2] + 1)
                else:
                    i = change[1] % len(tensor.dims)
                    tensor.dims[i] = change[2] if change[2] != tensor.dims[i] else change[2] + 1
            return check(work_dir, damaged(*place, apply), ".ckpt", True)

        @given(around, st.integers(0, 7), st.one_of(
            st.integers(2 ** 31, 2 ** 63 - 1), st.integers(-2 ** 63, -1),
            st.just("many")))
        def huge_dimensions(place, index, value):
            def apply(tensor):
                if value == "many":
                    tensor.dims.extend([1] * 33)
                elif not tensor.dims:
                    tensor.dims.append(value)
                else:
                    tensor.dims[index % len(tensor.dims)] = value
            return check(work_dir, damaged(*place, apply), ".ckpt", True)

        @given(around, st.one_of(st.sampled_from(sorted(_ITEM)),
                                 st.text(max_size=12).filter(lambda t: t not in (*_ITEM, "str"))))
        def wrong_type(place, new_type):
            def apply(tensor):
                old = _ITEM[tensor.tensor_type]
                same_size = _ITEM.get(new_type) == old  # a valid reinterpretation: avoided
                tensor.tensor_type = next(t for t, n in _ITEM.items() if n != old) \
                    if same_size else new_type
            return check(work_dir, damaged(*place, apply), ".ckpt", True)

        for test in (mutated, truncated, wrong_length, huge_dimensions, wrong_type):
            run(f"{label}.ckpt {test.__name__.replace('_', ' ')}", test)


def _records(path):
    """The entries of a .ckpt, each serialized alone (their concatenation is the file), and
    their tensor types."""
    whole = Checkpoint()
    with open(path, "rb") as f:
        data = f.read()
    whole.ParseFromString(data)
    records = []
    for value in whole.value:
        one = Checkpoint()
        one.value.add().CopyFrom(value)
        records.append(one.SerializeToString())
    assert b"".join(records) == data, f"{path} is not a plain concatenation of entries"
    return records, [value.tensor.tensor_type for value in whole.value]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
    os._exit(0)
