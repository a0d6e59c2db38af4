"""Fuzzing the checkpoint readers (hypothesis, time-bounded), each run in a child process
under a memory limit and a timeout, so that a crash, a hang or a runaway allocation fails the
test instead of taking pytest down:

- random and mutated PyTorch zip and legacy files, pickles and safetensors headers only ever
  raise the converter's own one-line errors, never run code, never allocate what the file
  cannot hold;
- damaged copies of a real training checkpoint and a real converted one only ever load or
  raise ``CheckpointReadError`` (MindSpore's own loader aborts the process on some of them),
  and every copy damaged on purpose is refused.
"""
import os
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import DEMO, LIGHT, REPO
from res2net_ms.convert.readers import save_safetensors

MEMORY_LIMIT = 3 * 1024 ** 3   # address space of the child: a terabyte claim cannot be met
EXAMPLES = 150                 # per strategy; about a minute in all on 2 CPU cores
CKPT_EXAMPLES = 100            # per strategy and seed: 1,000 cases, about 10 s
# Strategies whose every case is damaged on purpose (the others mutate at random).
MUST_REFUSE = ("truncated", "wrong length", "huge dimensions", "wrong type")


def fuzz(kind, seeds, work, examples):
    """``{strategy: (cases, refused)}`` of one run of ``tests/fuzz_readers.py``."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    work.mkdir()
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "fuzz_readers.py"), kind,
                           str(seeds), str(work), str(examples)], capture_output=True,
                          text=True, cwd=REPO, timeout=600, preexec_fn=limit,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    counts = {}
    for line in proc.stdout.splitlines():
        if line.strip():
            name, cases, refused = line.rsplit(" ", 2)
            counts[name] = (int(cases), int(refused))
    return counts


@pytest.fixture
def seeds(tmp_path):
    """Valid files to mutate: torch.save zip and legacy files, and a safetensors file."""
    torch = pytest.importorskip("torch")
    folder = tmp_path / "seeds"
    folder.mkdir()
    state = {"conv1.weight": torch.randn(4, 3, 3, 3), "bn1.running_mean": torch.zeros(4),
             "fc.bias": torch.arange(5, dtype=torch.float16), "step": torch.tensor(7)}
    torch.save({"state_dict": state, "meta": {"epoch": 3}}, folder / "zip.pth")
    torch.save(state, folder / "legacy.pth", _use_new_zipfile_serialization=False)
    save_safetensors({k: v.numpy() for k, v in state.items()} | {"w": np.ones(3, np.float32)},
                     folder / "weights.safetensors")
    return folder


@pytest.mark.slow
@pytest.mark.torch
def test_fuzzed_files_only_raise_our_errors(seeds, tmp_path, capsys):
    counts = fuzz("torch", seeds, tmp_path / "work", EXAMPLES)
    assert len(counts) == 7 and all(n >= EXAMPLES // 2 for n, _ in counts.values()), counts
    with capsys.disabled():
        print(f"\n  fuzzing: {sum(n for n, _ in counts.values())} cases ({counts})")


@pytest.fixture
def ckpt_seeds(tmp_path, digits_dir):
    """A training checkpoint of a real (two-step) run and a checkpoint converted from timm."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from res2net_ms.convert import convert_checkpoint

    folder = tmp_path / "ckpt_seeds"
    folder.mkdir()
    run = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--config", DEMO,
                          "--data_dir", digits_dir, *LIGHT, "--epoch_size", "1",
                          "--num_samples", "32", "--batch_size", "16", "--val_while_train",
                          "False", "--ckpt_save_dir", str(tmp_path / "run")],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    shutil.copy(tmp_path / "run" / "last.ckpt", folder / "training.ckpt")
    torch.manual_seed(0)
    torch.save(timm.create_model("res2net50_26w_4s").state_dict(), tmp_path / "timm.pth")
    convert_checkpoint(tmp_path / "timm.pth", "res2net50_26w_4s", out=folder / "converted.ckpt")
    return folder


@pytest.mark.slow
@pytest.mark.torch
def test_damaged_mindspore_checkpoints_only_raise_our_error(ckpt_seeds, tmp_path, capsys):
    counts = fuzz("ckpt", ckpt_seeds, tmp_path / "work", CKPT_EXAMPLES)
    assert len(counts) == 10, counts
    for name, (cases, refused) in counts.items():
        assert cases >= CKPT_EXAMPLES // 2, counts
        assert refused == cases if name.endswith(MUST_REFUSE) else 0 < refused < cases, counts
    with capsys.disabled():
        print(f"\n  .ckpt fuzzing: {sum(n for n, _ in counts.values())} cases, "
              f"{sum(r for _, r in counts.values())} refused ({counts})")
