"""The benchmarks cannot flatter us: PyTorch inside ``make bench`` runs as it runs alone (a
process that imported MindSpore would hold it to one thread), and no ratio to PyTorch comes
from a busy machine."""
import json
import math
import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

from conftest import REPO
from test_layout import modules_loaded_by

BENCH = os.path.join(REPO, "benchmarks")
sys.path.insert(0, BENCH)

import bench  # noqa: E402
import machine  # noqa: E402

NETWORK = ["--model", "res2net50_26w_4s", "--batch", "4", "--size", "64", "--num-classes", "10"]
SMALL = [*NETWORK, "--steps", "8", "--infer-steps", "2"]
# For runs whose speed is not compared (the control, any run on a busy machine): a step
# each. A busy machine's neighbours slow PyTorch's steps to seconds each here.
ONE_STEP = [*NETWORK, "--steps", "1", "--infer-steps", "1"]


RECIPE = json.dumps({"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "use_nesterov": False,
                     "label_smoothing": 0.0})


def shell_environment():
    """The user's shell's environment. A pytest-xdist worker starts with its controller's C
    environment, in which conftest's MindSpore set ``OMP_NUM_THREADS=1``: there the shell's
    is the environment the controller started with."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        return machine.shell_environment(os.getppid())
    return machine.shell_environment()


def _torch_worker(env, options, via_mindspore_parent=False):
    """``bench.py --worker torch`` started alone with ``env``, or by a parent process that
    imported MindSpore first and starts it as subprocesses start by default."""
    cmd = [sys.executable, os.path.join(BENCH, "bench.py"), "--worker", "torch", *options,
           "--recipe", RECIPE]
    if via_mindspore_parent:
        cmd = [sys.executable, "-c", "import mindspore, subprocess, sys; "
               "sys.exit(subprocess.run(sys.argv[1:]).returncode)", *cmd]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return machine.result_of(run)


@pytest.fixture(scope="module")
def torch_runs(tmp_path_factory):
    """The PyTorch worker alone and inside ``bench.py`` (its driver), interleaved three times,
    both started with this process's starting environment (the shell's); and a control: the
    worker started by a process that imported MindSpore. On a busy machine, where the speed
    is not compared, one round of a step each. No MatMul rates: nothing here reads them."""
    shell = shell_environment()
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    alone, in_bench, busy = [], [], []
    load_at_start = os.getloadavg()[0]  # later starts count this fixture's own workers
    quiet = machine.busy(load_at_start, []) is None
    options = SMALL if quiet else ONE_STEP
    for _ in range(3 if quiet else 1):
        alone.append(_torch_worker(shell, options))
        run = subprocess.run([sys.executable, os.path.join(BENCH, "bench.py"), *options,
                              "--impls", "torch", "--rounds", "1", "--matmul-at", "none",
                              "--out", str(out)], capture_output=True, text=True, cwd=REPO,
                             env=shell, timeout=1800)
        assert run.returncode == 0, run.stderr[-3000:]
        report = json.loads(out.read_text())
        in_bench += report["rounds"]["torch"]
        busy.append(machine.busy(load_at_start,
                                 [r["machine"] for r in report["rounds"]["torch"]]))
    control = _torch_worker(None, ONE_STEP, via_mindspore_parent=True)
    return {"alone": alone, "in_bench": in_bench, "control": control, "busy": busy,
            "recipe": report["recipe"]["recipe"]}


@pytest.mark.slow
@pytest.mark.torch
def test_the_torch_worker_in_bench_runs_in_the_shells_environment(torch_runs):
    """Inside ``make bench`` PyTorch gets what it gets alone: every thread, no variable of
    MindSpore's; the control shows what this catches (one thread, MindSpore's libraries)."""
    runs = torch_runs["alone"] + torch_runs["in_bench"]
    assert {r["threads"] for r in runs} == {os.cpu_count()}
    environments = {json.dumps(r["environment"], sort_keys=True) for r in runs}
    assert len(environments) == 1
    assert json.loads(environments.pop())["OMP_NUM_THREADS"] is None
    control = torch_runs["control"]
    assert control["threads"] == 1 < os.cpu_count()
    assert control["environment"]["OMP_NUM_THREADS"] == "1"
    assert "mindspore" in control["environment"]["LD_LIBRARY_PATH"]
    assert torch_runs["recipe"] == json.loads(RECIPE)  # train.py's, from the MindSpore side


@pytest.mark.slow
@pytest.mark.torch
def test_the_torch_worker_in_bench_runs_as_fast_as_alone(torch_runs):
    """The same speed within 10% (the best step of each: a busy spell counts less). Only on a
    quiet machine: on a busy one PyTorch's own step time varies by half between identical
    runs (measured here), and the comparison would measure the neighbours."""
    busy = next((b for b in torch_runs["busy"] if b), None)
    if busy:
        pytest.skip(f"speed compared on a quiet machine only: {busy}")
    best_alone = min(t for r in torch_runs["alone"] for t in r["train"])
    best_in_bench = min(t for r in torch_runs["in_bench"] for t in r["train"])
    assert abs(best_in_bench / best_alone - 1) <= 0.10, (best_in_bench, best_alone)


def test_a_driver_that_imported_a_framework_starts_no_worker():
    """This test process imported MindSpore (conftest): the benchmarks' runner refuses it."""
    assert "mindspore" in sys.modules
    with pytest.raises(RuntimeError, match="imported mindspore"):
        machine.run([sys.executable, "-c", "pass"], 60)


def test_the_drivers_import_neither_framework():
    code = ("sys.path.insert(0, 'benchmarks'); import bench, end_to_end, restarts, detect_bench, "
            "det_train_bench; "
            "bench.available(bench.parser().parse_args([]))")
    assert modules_loaded_by(code, ("mindspore", "torch", "res2net_ms", "mindcv", "timm")) == []


def test_no_ratio_to_pytorch_from_a_busy_machine():
    stat = {"median": 1.0, "spread": 0.0, "min": 1.0, "max": 1.0, "n": 1}
    summary = {impl: {"train": stat, "infer": stat, "first": stat, "rss": stat, "runs": []}
               for impl in ("ours", "mindcv", "torch")}
    opts = bench.parser().parse_args([])
    why = machine.busy(1.3, [{"others_share": 0.0}])
    assert "load average 1.30" in why
    busy_table = bench.table(summary, bench.ratios(summary, why), opts, None)
    line = next(l for l in busy_table.splitlines() if l.startswith("| ours / PyTorch"))
    assert "not given: the machine was busy" in line and "×" not in line
    assert "| ours / mindcv | 1.00×" in busy_table

    assert machine.busy(0.2, [{"others_share": 0.02}, {"others_share": 0.05}]) is None
    assert "took up to 30%" in machine.busy(0.2, [{"others_share": 0.3}])
    assert "could not be measured" in machine.busy(0.2, [{"others_share": None}])
    quiet_table = bench.table(summary, bench.ratios(summary, None), opts, None)
    assert "| ours / PyTorch | 1.00×" in quiet_table
    assert bench.ratios({"torch": summary["torch"]}, None) == {}  # a run of PyTorch alone


@pytest.mark.slow
@pytest.mark.torch
def test_end_to_end_runs_all_three_and_says_what_it_measured(tmp_path):
    """``bench.py --end-to-end`` on a few small photos: every implementation trains an epoch
    and infers over the folder, nothing fails, and the tables carry a number in every cell.
    Eight training photos: two steps an epoch, the fewest that give a steady rate; one block
    a stage (the same network in all three: the compiles are what takes time); the MatMul
    rates at the start only (those at the end are not checked)."""
    out = tmp_path / "e2e.json"
    run = subprocess.run([sys.executable, os.path.join(BENCH, "bench.py"), "--end-to-end",
                          "--images", "8", "--infer-images", "8", "--size", "64", "--batch",
                          "4", "--layers", "1", "1", "1", "1", "--matmul-size", "128",
                          "--matmul-at", "start", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO,
                         env=shell_environment(), timeout=3600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    summary = report["summary"]
    for impl in ("ours", "mindcv", "torch"):
        assert not summary[impl]["errors"], summary[impl]["errors"]
        assert summary[impl]["images_per_s"] > 0 and summary[impl]["loader_images_per_s"] > 0
        assert summary[impl]["command_seconds"] > summary[impl]["epoch_seconds"] > 0
    for name in ("ours_predict", "ours_predict_cached", "torch_predict"):
        assert not summary[name]["errors"] and summary[name]["command_seconds"] > 0
    assert {r["images"] for r in report["results"]["ours_predict"][0].values()} == {8, 4}
    assert report["matmul"]["start"]["mindspore"] and report["matmul"]["start"]["torch"]
    assert "| ours / mindcv (img/s) |" in run.stdout
    assert ("| ours / PyTorch (img/s) |" in run.stdout) == report["quiet"]


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.mmdet
@pytest.mark.skipif(find_spec("mmdet") is None, reason="mmdetection is not installed")
def test_the_detector_training_benchmark_times_both_on_finite_losses(tmp_path):
    """``det_train_bench.py`` tiny (Faster R-CNN, one block per stage, 128x128, one timed
    iteration): both implementations train, each iteration timed, every loss finite."""
    out = tmp_path / "det_train_bench.json"
    run = subprocess.run([sys.executable, os.path.join(BENCH, "det_train_bench.py"),
                          "--detectors", "faster_rcnn_r2_101_fpn", "--scale", "128", "128",
                          "--layers", "1", "1", "1", "1", "--iters", "1", "--max-gts", "8",
                          "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, env=shell_environment(),
                         timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())["detectors"]["faster_rcnn_r2_101_fpn"]
    for impl in ("mmdet", "ours"):
        assert "error" not in result[impl], result[impl]["error"]
        assert len(result[impl]["per_iter"]) == 1 and result[impl]["per_iter"][0] > 0
        assert len(result[impl]["losses"]) == 2
        assert all(math.isfinite(v) for losses in result[impl]["losses"]
                   for v in losses.values()), result[impl]["losses"]
    assert set(result["ours"]["losses"][0]) == set(result["mmdet"]["losses"][0])
    assert "| faster_rcnn_r2_101_fpn | " in run.stdout
