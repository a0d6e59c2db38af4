"""``make demo`` run a second time: the demo owns its run folder, so it trains afresh where
train.py alone stops with "holds another run's checkpoints". The scripts run from another
folder than the repository's, as a user's would."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import DEMO, LIGHT, REPO

pytestmark = pytest.mark.slow


def test_a_second_demo_trains_afresh(trained, digits_dir, tmp_path):
    """The folder a first demo leaves is conftest's trained run (the demo's network). The
    second demo's two steps are that run's graph (EMA and deterministic kernels as there):
    a run of other epochs and samples loads it from the compile cache."""
    save_dir = tmp_path / "demo"
    shutil.copytree(trained[1], save_dir)
    assert (save_dir / "last.ckpt").is_file()
    tiny = ["--epoch_size", "1", "--num_samples", "64", "--ema", "True", "--deterministic",
            "True"]

    def run(*argv):
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                              cwd=str(tmp_path), timeout=900)

    again = run(os.path.join(REPO, "train.py"), "--config", DEMO, "--data_dir", digits_dir,
                "--ckpt_save_dir", str(save_dir), *LIGHT, *tiny)
    assert again.returncode == 2 and "holds another run's checkpoints" in again.stderr

    demo = run("-m", "res2net_ms.demo", "--data_dir", digits_dir, "--ckpt_save_dir",
               str(save_dir), "--progress_bar", "off", *tiny)
    output = demo.stdout + demo.stderr
    # 2 steps are under the demo's 97 % target: exit 1 after the top-1 line.
    assert demo.returncode in (0, 1) and demo.stdout.splitlines()[-1].startswith("top-1: "), \
        output[-4000:]
    assert "removed the previous run's checkpoints" in output
    assert "compile cache: training step loaded" in output, output[-4000:]
    assert "Exception ignored" not in output
    with open(save_dir / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 1 and rows[0]["val_images"] == 360  # the demo's epoch alone
    assert sorted(n for n in os.listdir(save_dir) if n.endswith(".ckpt")) == [
        "best.ckpt", "last.ckpt", "res2net50_26w_4s-e0001.ckpt"]
