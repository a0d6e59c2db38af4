"""Training that survives: SIGKILL at any moment, a full disk, a diverging loss, bad images,
mixed-up folders. train.py runs in a subprocess, as a job scheduler would run it.

The runs train on ``tiny_dir`` (8 training and 4 validation digits a class) for 4 steps an
epoch: what is tested is what a run does when it is cut short or fed bad files, which needs
steps and checkpoints but no accuracy; most of each run's time is starting the process."""
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import mindspore as ms
import numpy as np
import pytest

from conftest import DEMO, LIGHT, REPO, ckpt_arrays, read_metrics, run_args, tiny_split
from res2net_ms.engine import train
from res2net_ms.run_state import read_run_state
from res2net_ms.fileio import TEMP_MARK

pytestmark = pytest.mark.slow

# Bit-exact settings: one data worker, deterministic kernels, no random crop or flip; three
# epochs, the last one validated (a resumed run must reproduce its number).
EXACT = ["--deterministic", "True", "--scale", "1", "1", "--ratio", "1", "1",
         "--num_samples", "64", "--batch_size", "16", "--epoch_size", "3",
         "--val_while_train", "True", "--val_interval", "3", "--ema", "True",
         "--log_interval", "1"]
STEPS_PER_EPOCH = 64 // 16
# A first epoch alone: the graph of EXACT's three epochs (the learning-rate table's length
# does not name a graph), which the reference run compiled.
ONE_EPOCH = [*EXACT, "--epoch_size", "1", "--val_while_train", "False"]


@pytest.fixture(scope="module")
def tiny_dir(digits_dir, tmp_path_factory):
    """The first 8 training and 4 validation images of each digit (80 / 40), copied."""
    return tiny_split(digits_dir, tmp_path_factory.mktemp("tiny") / "digits", 8, 4)


def train_cmd(digits_dir, save_dir, *extra):
    return [sys.executable, os.path.join(REPO, "train.py"), "--config", DEMO, "--data_dir",
            digits_dir, "--ckpt_save_dir", str(save_dir), *LIGHT, *extra]


def run(cmd, limit_bytes=None, timeout=600, cwd=REPO, env=None):
    """Run a command to its end (``env``: variables to add); with ``limit_bytes`` no file it
    writes may grow larger."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return subprocess.run(cmd, capture_output=True, text=True, cwd=str(cwd), timeout=timeout,
                          preexec_fn=limit if limit_bytes else None,
                          env={**os.environ, **(env or {})})


# Every step or epoch checkpoint is written as last.ckpt first (the others are links to it),
# through a temporary file named so (MindSpore writes it as ".last.ckpt.tmp-<pid>.tmp").
CHECKPOINT_TEMPORARY = ".last.ckpt" + TEMP_MARK


def _open_checkpoint_temporary(pid):
    """The name of a checkpoint's temporary file that process ``pid`` has open, or None."""
    fds = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fds)
    except OSError:
        return None
    for fd in names:
        try:
            name = os.path.basename(os.readlink(os.path.join(fds, fd)))
        except OSError:
            continue
        if name.startswith(CHECKPOINT_TEMPORARY):
            return name
    return None


def _checkpoint_temporaries(save_dir, pid):
    """The checkpoint temporaries of process ``pid`` in ``save_dir``: left only by a kill."""
    return [n for n in os.listdir(save_dir) if n.startswith(f"{CHECKPOINT_TEMPORARY}{pid}.")]


def kill_at(cmd, save_dir, moment, rng):
    """Start ``cmd`` and SIGKILL it at ``moment``: "write" (while it has a checkpoint's
    temporary file open) or "random" (in the epoch after this process's first one: after a
    random number of logged steps and a random part of the next, so that it dies anywhere in
    a step, a checkpoint write or the epoch's end, with a checkpoint to resume from).
    Returns "write" when the kill is proven to have cut a checkpoint write short (its
    temporary file is left behind), "killed" for other kills, None if the run finished
    first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    steps_before_kill = rng.randint(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH - 2)
    deadline, step_seen_at = None, []
    while proc.poll() is None:
        if moment == "write" and _open_checkpoint_temporary(proc.pid):
            break
        if moment == "random" and deadline is None:
            steps = sum(" step " in line for line in lines)
            if steps > len(step_seen_at):
                step_seen_at.extend([time.monotonic()] * (steps - len(step_seen_at)))
            if steps >= steps_before_kill:
                step_time = step_seen_at[-1] - step_seen_at[-2]
                deadline = step_seen_at[-1] + rng.uniform(0.0, 1.0) * step_time
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(0.002)
    if proc.poll() is not None:
        reader.join()
        assert proc.returncode == 0, "".join(lines)[-3000:]
        return None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join()
    cut_short = moment == "write" and _checkpoint_temporaries(save_dir, proc.pid)
    return "write" if cut_short else "killed"


def every_checkpoint_loads(save_dir):
    names = [n for n in os.listdir(save_dir) if n.endswith(".ckpt") and TEMP_MARK not in n]
    for name in names:
        ms.load_checkpoint(os.path.join(save_dir, name))  # raises if torn
        assert read_run_state(os.path.join(save_dir, name)) is not None, name
    return names


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory):
    """``(folder, last.ckpt's arrays)`` of the uninterrupted run every interrupted one must
    end equal to."""
    save_dir = tmp_path_factory.mktemp("reference")
    proc = run(train_cmd(tiny_dir, save_dir, *EXACT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save_dir, ckpt_arrays(save_dir / "last.ckpt")


@pytest.mark.parametrize("extra, moments", [
    ([], ["random", "write", "random"]),
    (["--ckpt_save_steps", "2"], ["write", "random", "write"]),
], ids=["epoch-checkpoints", "step-checkpoints"])
def test_killed_runs_resume_to_the_uninterrupted_weights(tiny_dir, tmp_path, reference, extra,
                                                         moments, capsys):
    _, reference = reference
    save_dir = tmp_path / "run"
    cmd = train_cmd(tiny_dir, save_dir, *EXACT, *extra, "--resume", "auto")
    rng = random.Random(len(extra))
    kills = resumes = in_writes = 0
    for moment in moments:
        outcome = kill_at(cmd, save_dir, moment, rng)
        if outcome is None:
            break
        kills += 1
        in_writes += outcome == "write"
        if os.path.isdir(save_dir):
            resumes += bool(every_checkpoint_loads(save_dir))
    final = run(cmd)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "Traceback" not in final.stderr
    every_checkpoint_loads(save_dir)
    assert not [n for n in os.listdir(save_dir) if TEMP_MARK in n]  # cleaned at a start
    result = ckpt_arrays(save_dir / "last.ckpt")
    assert sorted(result) == sorted(reference)
    worst = max(float(np.max(np.abs(result[k].astype(np.float64) - reference[k])))
                if result[k].size else 0.0 for k in reference)
    with capsys.disabled():
        print(f"\n  kill test ({'step' if extra else 'epoch'} checkpoints): {kills} kills "
              f"({in_writes} while a checkpoint was written), {resumes} resumed from a "
              f"checkpoint, max |weight difference| {worst:g}")
    assert kills == 3 and resumes >= 2
    assert in_writes >= 1
    assert worst == 0.0
    assert [r["epoch"] for r in read_metrics(save_dir)] == [1, 2, 3]


def test_a_renamed_checkpoint_resumed_elsewhere_continues_exactly(tiny_dir, reference, tmp_path):
    """Epoch 2's checkpoint of the reference run, resumed (by train() in this process) under
    another name into another folder, ends where the uninterrupted run ended: weights, BN
    statistics, optimizer moments, EMA, step, and epoch 3's validation and learning rate."""
    full, arrays = reference
    renamed = tmp_path / "some name.ckpt"
    shutil.copyfile(full / "res2net50_26w_4s-e0002.ckpt", renamed)
    resumed = tmp_path / "resumed"
    try:
        summary = train(run_args(tiny_dir, resumed, *EXACT, "--resume", str(renamed)))
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert summary["global_step"] == 3 * STEPS_PER_EPOCH
    result = ckpt_arrays(resumed / "last.ckpt")
    assert sorted(result) == sorted(arrays)
    for key in arrays:
        np.testing.assert_array_equal(result[key], arrays[key], err_msg=key)
    assert [r["epoch"] for r in read_metrics(resumed)] == [3]
    assert read_metrics(resumed)[0]["val_top1"] == read_metrics(full)[2]["val_top1"]
    assert read_metrics(resumed)[0]["lr"] == read_metrics(full)[2]["lr"]


@pytest.fixture(scope="module")
def one_epoch(tiny_dir, reference, tmp_path_factory):
    """A finished one-epoch run to build faults on (copied by each test). It loads the graph
    the reference run of three epochs compiled: the learning-rate table is padded to a
    length that does not depend on the epoch count."""
    save_dir = tmp_path_factory.mktemp("one_epoch") / "run"
    proc = run(train_cmd(tiny_dir, save_dir, *ONE_EPOCH))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compile cache: training step loaded" in proc.stdout, proc.stdout[-3000:]
    return save_dir


def _copy(run_dir, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


def _error_line(proc):
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_full_disk_keeps_the_previous_checkpoint(tiny_dir, one_epoch, tmp_path):
    """Without the compile cache: its entries are larger than the limit (a load under the
    limit fails: not tested)."""
    save_dir = _copy(one_epoch, tmp_path)
    before = (save_dir / "last.ckpt").read_bytes()
    limit = 4 * 1024 * 1024  # logs and config fit, a checkpoint does not
    proc = run(train_cmd(tiny_dir, save_dir, *ONE_EPOCH, "--epoch_size", "2", "--resume",
                         "auto"), limit_bytes=limit, env={"R2N_COMPILE_CACHE": "0"})
    line = _error_line(proc)
    assert "last.ckpt" in line and "larger than the system allows" in line
    assert (save_dir / "last.ckpt").read_bytes() == before
    ms.load_checkpoint(str(save_dir / "last.ckpt"))
    assert not [n for n in os.listdir(save_dir) if TEMP_MARK in n]


def test_a_fresh_run_never_mixes_with_another(tiny_dir, one_epoch, tmp_path):
    save_dir = _copy(one_epoch, tmp_path)
    line = _error_line(run(train_cmd(tiny_dir, save_dir, *ONE_EPOCH)))
    assert "holds another run's checkpoints" in line and "--resume auto" in line \
        and "--overwrite True" in line
    proc = run(train_cmd(tiny_dir, save_dir, *ONE_EPOCH,
                         "--overwrite", "True"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "overwrite: removed the previous run" in proc.stdout
    assert [r["epoch"] for r in read_metrics(save_dir)] == [1]
    empty = tmp_path / "empty"
    proc = run(train_cmd(tiny_dir, empty, *ONE_EPOCH, "--resume", "auto"))
    assert proc.returncode == 0 and "no checkpoint in" in proc.stdout


def test_a_torn_metrics_line_is_dropped_on_resume(tiny_dir, one_epoch, tmp_path):
    save_dir = _copy(one_epoch, tmp_path)
    with open(save_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "global_step": 1')               # a kill during the append
    proc = run(train_cmd(tiny_dir, save_dir, *EXACT, "--resume", "auto"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not a complete record" in proc.stdout
    assert [r["epoch"] for r in read_metrics(save_dir)] == [1, 2, 3]


def test_a_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tiny_dir, one_epoch,
                                                                    tmp_path):
    save_dir = _copy(one_epoch, tmp_path)
    before = (save_dir / "last.ckpt").read_bytes()
    proc = run(train_cmd(tiny_dir, save_dir, *EXACT, "--resume", "auto",
                         "--lr", "1e30", "--warmup_epochs", "0", "--max_nonfinite_steps", "2"))
    line = _error_line(proc)
    assert "not finite for 2 steps in a row" in line and "last good checkpoint" in line
    assert (save_dir / "last.ckpt").read_bytes() == before


def _with_a_bad_image(tiny_dir, tmp_path, split):
    root = tmp_path / "data"
    shutil.copytree(tiny_dir, root)
    victim = root / split / "4" / sorted(os.listdir(root / split / "4"))[2]
    victim.write_bytes(victim.read_bytes()[:100])
    return str(root), victim


def test_a_bad_validation_image_stops_training_with_one_line(tiny_dir, tmp_path):
    root, victim = _with_a_bad_image(tiny_dir, tmp_path, "val")
    proc = run(train_cmd(root, tmp_path / "ckpt", *ONE_EPOCH, "--val_while_train", "True"))
    line = _error_line(proc)
    assert str(victim) in line and "skip_bad_images" in line
    assert "epoch 1/1 loss" not in proc.stdout  # it stopped in the epoch's validation


def test_skip_bad_images_leaves_a_bad_validation_image_out(tiny_dir, tmp_path):
    """Training's validation and validate.py leave the file out and count it, and agree;
    validate.py without skip_bad_images names it in one line. validate.py runs from another
    folder than the repository's, with the run's config (data folder, EMA and skipping
    included) taken from the checkpoint, and exits cleanly."""
    root, victim = _with_a_bad_image(tiny_dir, tmp_path, "val")
    good = sum(len(files) for _, _, files in os.walk(os.path.join(root, "val"))) - 1
    save_dir = tmp_path / "ckpt"
    proc = run(train_cmd(root, save_dir, *ONE_EPOCH,
                         "--val_while_train", "True", "--skip_bad_images", "True"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipping undecodable image '{victim}'" in proc.stdout
    record = read_metrics(save_dir)[0]
    assert (record["val_images"], record["val_bad_images_skipped"]) == (good, 1)
    validate = [sys.executable, os.path.join(REPO, "validate.py"), "--ckpt_path",
                str(save_dir / "last.ckpt")]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run(validate, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Exception ignored" not in proc.stderr
    assert f"({good} images, 1 undecodable skipped)" in proc.stdout
    assert float(re.search(r"top-1: ([0-9.]+)%", proc.stdout).group(1)) == \
        round(record["val_top1"], 2)
    line = _error_line(run(validate + ["--data_dir", root, "--skip_bad_images", "False"]))
    assert str(victim) in line and "skip_bad_images" in line


def test_a_bad_image_stops_the_cli_with_one_line(tiny_dir, tmp_path):
    """One batch of every training image: the first batch holds the bad one, whatever the
    order, so the run stops before it compiles."""
    root, victim = _with_a_bad_image(tiny_dir, tmp_path, "train")
    count = str(sum(len(files) for _, _, files in os.walk(os.path.join(root, "train"))))
    proc = run(train_cmd(root, tmp_path / "ckpt", *ONE_EPOCH, "--num_samples", count,
                         "--batch_size", count, "--deterministic", "False"))
    line = _error_line(proc)
    assert str(victim) in line and "skip_bad_images" in line
