"""Fuzzing of the checkpoint readers, run by ``test_fuzz.py`` in a child process with a memory
limit, so that a crash, a hang or a runaway allocation fails the test instead of the suite.

``python tests/fuzz_readers.py SEED_DIR WORK_DIR EXAMPLES`` prints one line per strategy:
``<name> <cases>``; it exits non-zero on the first input that raised anything but the
converter's own one-line errors, or that made the reader run code (an audit hook watches).
"""
import json
import os
import struct
import sys
import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from res2net_ms.convert.errors import CheckpointFormatError, UnsafeCheckpointError
from res2net_ms.convert.readers import load_any

# What loading a checkpoint must never do.
FORBIDDEN = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "subprocess.Popen",
             "ctypes.dlopen", "socket.connect", "os.remove", "os.rename", "shutil.rmtree")
_watching = []


def _audit(event, args):
    if _watching and event.startswith(FORBIDDEN):
        _watching.append(event)


def check(work_dir, data, suffix):
    """Load ``data`` as a file: a result, or one of our one-line errors naming the file."""
    path = os.path.join(work_dir, "case" + suffix)
    with open(path, "wb") as f:
        f.write(data)
    _watching[:] = [True]
    try:
        load_any(path)
    except (CheckpointFormatError, UnsafeCheckpointError) as exc:
        message = str(exc)
        assert "\n" not in message and path in message, message
    finally:
        ran = _watching[1:]
        _watching.clear()
    assert not ran, f"loading ran {ran}"


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


def main(seed_dir, work_dir, examples):
    sys.addaudithook(_audit)
    seeds = {name: open(os.path.join(seed_dir, name), "rb").read()
             for name in sorted(os.listdir(seed_dir))}
    config = settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
    counts = {}

    def run(name, test):
        counts[name] = 0
        inner = test.hypothesis.inner_test

        def counted(*args, **kwargs):
            counts[name] += 1
            inner(*args, **kwargs)
        test.hypothesis.inner_test = counted
        config(test)()

    edits = st.lists(st.tuples(st.integers(0, 2 ** 31), st.integers(0, 255)), max_size=12)
    cuts = st.one_of(st.none(), st.integers(0, 2 ** 31))
    for seed_name, seed in seeds.items():
        run(f"mutated {seed_name}", given(edits, cuts)(_mutated(work_dir, seed, seed_name)))

    @given(st.binary(max_size=512), st.sampled_from([".pth", ".bin", ".safetensors", ".pt"]))
    def random_bytes(data, suffix):
        check(work_dir, data, suffix)

    @given(st.binary(max_size=256))
    def random_pickles(body):
        check(work_dir, _zip_with_pickle(b"\x80\x02" + body), ".pth")

    @given(st.binary(max_size=256))
    def legacy_pickles(body):  # after the legacy magic number's pickle
        check(work_dir, b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19." + body, ".pth")

    @given(_header, st.binary(max_size=64))
    def safetensors_headers(header, payload):
        check(work_dir, safetensors_file(header, payload), ".safetensors")

    for test in (random_bytes, random_pickles, legacy_pickles, safetensors_headers):
        run(test.__name__.replace("_", " "), test)
    for name, count in counts.items():
        print(f"{name} {count}", flush=True)


def _mutated(work_dir, seed, name):
    def case(edits, cut):
        check(work_dir, mutate(seed, edits, cut), os.path.splitext(name)[1])
    return case


def _zip_with_pickle(pickled):
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", b"\0" * 16)
    return buffer.getvalue()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    os._exit(0)
