"""Fuzzing the checkpoint readers (hypothesis, time-bounded): random and mutated PyTorch zip
and legacy files, pickles and safetensors headers only ever raise the converter's own
one-line errors, never run code, never crash or hang, never allocate what the file cannot
hold. The cases run in a child process under a memory limit and a timeout."""
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from res2net_ms.convert.readers import save_safetensors

MEMORY_LIMIT = 3 * 1024 ** 3   # address space of the child: a terabyte claim cannot be met
EXAMPLES = 150                 # per strategy; about a minute in all on 2 CPU cores


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


@pytest.mark.torch
def test_fuzzed_files_only_raise_our_errors(seeds, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "fuzz_readers.py"),
                           str(seeds), str(work), str(EXAMPLES)], capture_output=True,
                          text=True, cwd=REPO, timeout=600, preexec_fn=limit,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    counts = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1])
              for line in proc.stdout.splitlines() if line.strip()}
    assert len(counts) == 7 and all(n >= EXAMPLES // 2 for n in counts.values()), counts
    with capsys.disabled():
        print(f"\n  fuzzing: {sum(counts.values())} cases ({counts})")
