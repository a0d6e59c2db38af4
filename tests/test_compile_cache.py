"""The compile cache (res2net_ms/compile_cache.py): a graph compiled once is loaded by the
next identical compile, in this or another process; a changed option, shape, constant,
precision, device setting, MindSpore or source compiles afresh; a damaged, refused or
half-written entry is never loaded (rebuilt with a warning)."""
import json
import os
import resource
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from conftest import DEMO, LIGHT, REPO, read_metrics
from res2net_ms import compile_cache
from res2net_ms.compile_cache import compile_cell, graph_key
from res2net_ms.factory import create_model
from res2net_ms.fileio import TEMP_MARK, sha256_file
from test_layout import _imports_by_part


class Scaled(nn.Cell):
    """A conv, a constant tensor (a value node of the graph) and a head."""

    def __init__(self, scale=2.0, channels=8):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3)
        self.scale = Tensor(scale, ms.float32)
        self.fc = nn.Dense(channels, 4)

    def construct(self, x):
        return self.fc(self.conv(x).mean((2, 3)) * self.scale)


def _built(seed=0, **kwargs):
    ms.set_seed(seed)
    return Scaled(**kwargs)


def _x(n=2, dtype=np.float32):
    return Tensor(np.random.RandomState(0).randn(n, 3, 16, 16).astype(dtype))


def _reference(cell, x):
    """What ``cell`` computes, compiled without the cache (a clone with its weights)."""
    ms.set_seed(0)
    twin = Scaled(float(cell.scale.asnumpy()), cell.fc.in_channels)
    ms.load_param_into_net(twin, {n: ms.Parameter(p.data.asnumpy().copy(), n)
                                  for n, p in cell.parameters_and_names()})
    os.environ[compile_cache.ENV_SWITCH] = "0"
    try:
        compile_cell(twin, x)
        return twin(x).asnumpy()
    finally:
        os.environ.pop(compile_cache.ENV_SWITCH)


def _entries(root):
    return sorted(n for n in os.listdir(root) if not n.startswith("."))


@pytest.fixture
def cache(tmp_path, monkeypatch, graph_mode):
    """A fresh cache folder, the cache on, and MindSpore's graph numbering known (another
    test's failed compile may have left it unknown: one compile tells it again)."""
    monkeypatch.setenv("R2N_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(compile_cache.ENV_SWITCH, raising=False)
    monkeypatch.setattr(compile_cache._work, "broken", None)
    compile_cell(_built(scale=5.0), _x())
    root = compile_cache.cache_root()
    for name in _entries(root):
        compile_cache._remove_entry(os.path.join(root, name))
    return root


def test_a_second_compile_loads_the_graph_and_runs_its_own_weights(cache, capfd):
    x = _x()
    first = _built(seed=0)
    assert compile_cell(first, x, what="first") == "compiled"
    assert len(_entries(cache)) == 1
    loaded_before = compile_cache.stats["loaded"]
    second = _built(seed=1)  # the same graph, other weights
    assert compile_cell(second, x, what="second") == "loaded"
    assert compile_cache.stats["loaded"] == loaded_before + 1
    assert compile_cell(second, x) == "reused"
    got, want = second(x).asnumpy(), _reference(second, x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(got, first(x).asnumpy())
    assert len(_entries(cache)) == 1
    err = capfd.readouterr().err
    assert "correctness risks" not in err and "MS_DEV_FORCE_USE_COMPILE_CACHE" not in err


@pytest.mark.parametrize("change", ["constant", "channels", "batch", "dtype", "training",
                                    "jit_level"])
def test_a_changed_option_compiles_afresh(cache, change):
    x = _x()
    assert compile_cell(_built(), x) == "compiled"
    cell, y = _built(), x
    if change == "constant":   # MindSpore's own cache loads the old graph here
        cell = _built(scale=3.0)
    elif change == "channels":
        cell = _built(channels=16)
    elif change == "batch":
        y = _x(n=3)
    elif change == "dtype":
        cell.to_float(ms.float16)
    elif change == "training":
        cell.set_train(True)
    else:
        ms.set_context(jit_config={"jit_level": "O0"})
    try:
        assert compile_cell(cell, y) == "compiled"
        if change not in ("dtype", "training"):
            np.testing.assert_allclose(cell(y).asnumpy(), _reference(cell, y), rtol=1e-6,
                                       atol=1e-6)
    finally:
        ms.set_context(jit_config={"jit_level": "O2"})
    assert len(_entries(cache)) == 2
    assert compile_cell(_built(seed=3), x) == "loaded"  # the first graph is still there


def _light(**kwargs):
    return create_model("res2net50_26w_4s", num_classes=10, layers=[1, 1, 1, 1], **kwargs)


def test_the_key_covers_what_shapes_a_graph_and_not_the_weights(monkeypatch, graph_mode):
    x = Tensor(np.zeros((2, 3, 32, 32), np.float32))
    ms.set_seed(0)
    base, _ = graph_key(_light().set_train(False), (x,))
    ms.set_seed(1)
    assert graph_key(_light().set_train(False), (x,))[0] == base  # weights are not in it

    def key(net=None, inputs=(x,)):
        return graph_key((net or _light()).set_train(False), inputs)[0]

    changed = {
        "classes": key(create_model("res2net50_26w_4s", num_classes=5, layers=[1, 1, 1, 1])),
        "drop_path": key(_light(drop_path_rate=0.1)),
        "norm_eval": key(_light(norm_eval=True)),
        "size": key(inputs=(Tensor(np.zeros((2, 3, 64, 64), np.float32)),)),
        "amp": key(_light().to_float(ms.float16)),
    }
    monkeypatch.setenv("MS_DEV_SOME_SWITCH", "1")
    changed["MS_DEV_ switch"] = key()
    monkeypatch.delenv("MS_DEV_SOME_SWITCH")
    monkeypatch.setitem(compile_cache._source_hashes, "res2net_ms", "edited")
    changed["our source"] = key()
    monkeypatch.undo()
    monkeypatch.setattr(ms, "__version__", "2.8.1")
    changed["MindSpore"] = key()
    monkeypatch.undo()
    assert key() == base
    assert base not in changed.values() and len(set(changed.values())) == len(changed), changed


def test_learning_rate_tables_of_other_lengths_share_a_shape():
    """Padded with the last rate to 4096 steps or the next power of two (a run of other
    epochs loading a graph: test_faults' one-epoch run, test_demo)."""
    lr_table_for_graph = compile_cache.lr_table_for_graph
    short, long = lr_table_for_graph([0.1, 0.2, 0.3]), lr_table_for_graph(np.linspace(0, 1, 5000))
    assert short.shape == (4096,) and long.shape == (8192,)
    assert lr_table_for_graph(np.ones(4096)).shape == (4096,)
    np.testing.assert_array_equal(short[:3], np.float32([0.1, 0.2, 0.3]))
    assert np.all(short[3:] == np.float32(0.3))
    np.testing.assert_array_equal(long[:5000], np.float32(np.linspace(0, 1, 5000)))
    assert np.all(long[5000:] == 1.0)


def test_the_key_is_the_same_in_another_process(graph_mode):
    """Under the same context: an earlier test of the session (conftest's ``trained`` run)
    may have switched determinism on, which is part of the key."""
    deterministic = ms.get_context("deterministic") == "ON"
    code = ("import mindspore as ms, numpy as np\n"
            "ms.set_context(mode=ms.GRAPH_MODE, jit_config={'jit_level': 'O2'})\n"
            f"if {deterministic}: ms.set_deterministic(True)\n"
            "from res2net_ms.compile_cache import graph_key\n"
            "from res2net_ms.factory import create_model\n"
            "net = create_model('res2net50_26w_4s', num_classes=10, layers=[1, 1, 1, 1])\n"
            "x = ms.Tensor(np.zeros((2, 3, 32, 32), np.float32))\n"
            "print('KEY', graph_key(net.set_train(False), (x,))[0])\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    theirs = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("KEY")]
    x = Tensor(np.zeros((2, 3, 32, 32), np.float32))
    assert theirs == [graph_key(_light().set_train(False), (x,))[0]], run.stderr[-2000:]


def _flip_byte(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


DAMAGES = {
    "flipped byte": lambda entry, graph: _flip_byte(graph),
    "truncated graph": lambda entry, graph: open(graph, "r+b").truncate(100),
    "missing graph": lambda entry, graph: os.remove(graph),
    "torn manifest": lambda entry, graph: open(os.path.join(entry, "manifest.json"),
                                               "w").write('{"format": 1, "ke'),
    "no manifest": lambda entry, graph: os.remove(os.path.join(entry, "manifest.json")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_entry_is_rebuilt_with_a_warning(cache, damage, caplog):
    x = _x()
    assert compile_cell(_built(), x) == "compiled"
    entry = os.path.join(cache, _entries(cache)[0])
    graph = os.path.join(entry, "compile_cache_@.mindir")
    DAMAGES[damage](entry, graph)
    cell = _built(seed=2)
    with caplog.at_level("WARNING", logger="res2net_ms"):
        assert compile_cell(cell, x) == "rebuilt"
    assert any("is damaged" in r.getMessage() and entry in r.getMessage()
               for r in caplog.records), caplog.text
    np.testing.assert_allclose(cell(x).asnumpy(), _reference(cell, x), rtol=1e-6, atol=1e-6)
    assert compile_cell(_built(seed=4), x) == "loaded"  # the entry is whole again


def test_an_entry_mindspore_refuses_is_rebuilt_with_a_warning(cache, caplog):
    """A file that passes the manifest's check but is no graph (as a MindIR of a broken
    MindSpore would be): MindSpore compiles afresh, the entry is replaced."""
    x = _x()
    assert compile_cell(_built(), x) == "compiled"
    entry = os.path.join(cache, _entries(cache)[0])
    graph = os.path.join(entry, "compile_cache_@.mindir")
    open(graph, "wb").write(b"not a MindIR" * 100)
    manifest_path = os.path.join(entry, "manifest.json")
    manifest = json.load(open(manifest_path))
    manifest["files"]["compile_cache_@.mindir"] = {
        "bytes": 1200, "sha256": sha256_file(graph)}
    json.dump(manifest, open(manifest_path, "w"))
    cell = _built(seed=2)
    with caplog.at_level("WARNING", logger="res2net_ms"):
        assert compile_cell(cell, x) == "rebuilt"
    assert "refused by MindSpore" in caplog.text
    np.testing.assert_allclose(cell(x).asnumpy(), _reference(cell, x), rtol=1e-6, atol=1e-6)
    assert compile_cell(_built(seed=4), x) == "loaded"


def test_an_entry_that_cannot_be_copied_into_place_compiles_without_the_cache(cache, caplog):
    """A file-size limit (as a full disk) below the entry's graph: copying it into
    MindSpore's folder fails, and the run compiles without the cache, saying why."""
    x = _x()
    assert compile_cell(_built(), x) == "compiled"
    entry = os.path.join(cache, _entries(cache)[0])
    size = os.path.getsize(os.path.join(entry, "compile_cache_@.mindir"))
    cell = _built(seed=2)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, hard))
    try:
        with caplog.at_level("WARNING", logger="res2net_ms"):
            assert compile_cell(cell, x) == "uncached"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        compile_cache._work.broken = None
    assert f"cannot copy {entry} into place" in caplog.text
    assert "File too large" in caplog.text, caplog.text  # the limit was what stopped it
    np.testing.assert_allclose(cell(x).asnumpy(), _reference(cell, x), rtol=1e-6, atol=1e-6)


def test_killed_writers_leave_nothing_that_loads(cache, tmp_path, monkeypatch):
    """A kill while an entry is written leaves only its temporary folder (the entry appears
    by a rename); the next process removes those of dead processes, and its own folder."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    root = str(tmp_path / "fresh")
    os.makedirs(root)
    leftovers = [os.path.join(root, f".{'0' * 64}{TEMP_MARK}{dead.pid}"),
                 os.path.join(root, f".work{TEMP_MARK}{dead.pid}")]
    for folder in leftovers:
        os.makedirs(os.path.join(folder, "rank_0"))
    monkeypatch.setattr(compile_cache, "cache_root", lambda: root)
    assert compile_cell(_built(), _x()) == "compiled"
    assert not any(os.path.exists(f) for f in leftovers)


def test_the_switch_turns_it_off(cache, monkeypatch):
    monkeypatch.setenv(compile_cache.ENV_SWITCH, "0")
    assert compile_cell(_built(), _x()) == "uncached"
    assert compile_cell(_built(), _x()) == "uncached"
    assert _entries(cache) == []


def test_it_sits_below_the_engine_and_above_the_networks():
    graph = _imports_by_part()
    assert graph["compile_cache"] <= {"fileio"}
    assert not any("compile_cache" in graph.get(part, ())
                   for part in ("models", "convert", "ckpt", "fileio", "hub", "factory"))


@pytest.mark.slow
def test_a_second_export_loads_both_its_graphs(cache, tmp_path):
    """export compiles the network (for the logits it checks the file against) and its export
    form (in mindspore.export): the second export of the same network loads both, and its
    file still passes the export's check against the network's logits."""
    from res2net_ms.data import Preprocess
    from res2net_ms.export import export
    from res2net_ms.inference import LoadedModel

    outcomes = []
    for i in range(2):
        ms.set_seed(0)
        loaded = LoadedModel(_light().set_train(False), "res2net50_26w_4s", 10,
                             Preprocess.of_model("res2net50_26w_4s", image_size=32), None, "test")
        before = dict(compile_cache.stats)
        result = export(loaded, str(tmp_path / f"light{i}"), "MINDIR", image_size=32)
        outcomes.append({k: v - before.get(k, 0) for k, v in compile_cache.stats.items()
                         if v != before.get(k, 0)})
        assert result["max_rel_diff"] <= 1e-5
    assert outcomes == [{"compiled": 2}, {"loaded": 2}]


@pytest.fixture(scope="module")
def light_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("light") / "light.ckpt"
    ms.set_seed(0)
    ms.save_checkpoint(_light(), str(path))
    return str(path)


@pytest.mark.slow
def test_a_second_validate_loads_its_graph(digits_dir, light_checkpoint, tmp_path):
    """The command line, twice: the second compile is the cache's (its log line), with the
    same numbers."""
    cmd = [sys.executable, "validate.py", "--config", DEMO, "--data_dir", digits_dir,
           *LIGHT, "--ckpt_path", light_checkpoint, "--ema", "False"]
    env = {**os.environ, "R2N_CACHE_DIR": str(tmp_path)}
    env.pop(compile_cache.ENV_SWITCH, None)
    runs = [subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env,
                           timeout=600) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    assert "compile cache: evaluation compiled" in runs[0].stdout
    assert "compile cache: evaluation loaded" in runs[1].stdout
    results = [next(line for line in r.stdout.splitlines() if "top-1" in line) for r in runs]
    assert results[0].split("images/s")[0] == results[1].split("images/s")[0]
    assert "correctness risks" not in runs[1].stderr


@pytest.mark.distributed
def test_each_rank_of_an_msrun_job_loads_its_own_graphs(one_step_job, digits_dir, tmp_path):
    """Two ranks, the same job twice (test_distributed's one training step and validation):
    each rank caches its graphs under its own key (rank and group size are in it) and loads
    them the second time (each entry is touched when loaded; rank 1 logs warnings only); the
    job computes the same numbers."""
    from test_distributed import run_one_step_job

    first = one_step_job
    assert first["returncode"] == 0, first["output"]
    start = time.time()
    second = run_one_step_job(digits_dir, os.path.dirname(first["data"]),
                              save_dir=str(tmp_path / "run1"), log_dir=str(tmp_path / "log1"))
    assert second["returncode"] == 0, second["output"]
    runs = [read_metrics(first["save_dir"]), read_metrics(second["save_dir"])]
    root = os.path.join(first["cache"], "compile")
    summaries = {}
    for name in _entries(root):
        manifest = json.load(open(os.path.join(root, name, "manifest.json")))
        summary = manifest["summary"]
        summaries[(summary["what"], summary["rank"])] = summary["group_size"]
        assert os.path.getmtime(os.path.join(root, name, "manifest.json")) > start
    assert summaries == {(w, r): 2 for w in ("training step", "evaluation") for r in (0, 1)}
    assert runs[0][0]["train_loss"] == runs[1][0]["train_loss"]
    assert runs[0][0]["val_top1"] == runs[1][0]["val_top1"]
