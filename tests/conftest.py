"""Shared fixtures and helpers: execution modes, the digits data, training arguments.

Markers (registered in pyproject.toml): ``slow`` (real training runs, minutes), ``distributed``
(msrun jobs), ``torch`` (needs PyTorch/timm references). ``make test-fast`` leaves out the
slow and distributed ones.
"""
import json
import os

import mindspore as ms
import numpy as np
import pytest

from res2net_ms.data import write_digits_imagefolder
from res2net_ms.engine import parse_run_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo", "digits_cpu.yaml")
# One block per stage and no progress output: the demo's network, fast enough for tests.
LIGHT = ["--model_kwargs", "{layers: [1, 1, 1, 1]}", "--progress_bar", "off"]


def run_args(digits_dir, save_dir, *extra, base="resume"):
    """Parsed train.py arguments: the demo config on ``digits_dir``, saving to ``save_dir``."""
    return parse_run_args(["--config", DEMO, "--data_dir", digits_dir, "--ckpt_save_dir",
                           str(save_dir), *LIGHT, "--log_interval", "1000", *extra],
                          base_checkpoint=base)


def read_metrics(save_dir):
    """The records of ``metrics.jsonl`` in ``save_dir``."""
    with open(os.path.join(save_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def ckpt_arrays(path):
    """``{name: numpy array}`` of a checkpoint's tensors (metadata strings left out)."""
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()
            if not isinstance(v, str)}


def randomised_torch(model, seed=0):
    """A PyTorch model with random BN scales, shifts and statistics, in eval mode (timm
    zero-inits each block's last BN, which would hide a wrong branch)."""
    import torch  # the reference tests' optional dependency

    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def random_images(n=2, size=64, seed=0, channels=3):
    return np.random.RandomState(seed).randn(n, channels, size, size).astype(np.float32)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """scikit-learn digits as 32 px RGB PNGs: 1437 train / 360 val images, classes 0..9."""
    return write_digits_imagefolder(str(tmp_path_factory.mktemp("data") / "digits"), size=32)


@pytest.fixture
def graph_mode():
    """GRAPH_MODE with jit_level O2, as training runs it."""
    ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": "O2"})
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture
def pynative_mode():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
