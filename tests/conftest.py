"""Shared fixtures and helpers: execution modes, the digits data, training arguments.

Markers (registered in pyproject.toml): ``slow`` (training runs, full-zoo sweeps, fuzzing,
waits on other processes, and any test of 6 s or more in the two-worker run: a full-size
graph compile, a command end to end), ``distributed`` (msrun jobs), ``mmdet`` (runs
mmdetection itself), ``torch`` (needs PyTorch/timm references). ``make test-fast`` leaves
out the slow, distributed and mmdet ones.

Costly things are made once per session and shared: the digits folder, the ``trained`` run
(training, CAM and predict tests), the ``one_step_job`` under msrun (distributed and compile
cache tests) and the ``small_detector``.
"""
import fcntl
import json
import os
import shutil
import tempfile

import mindspore as ms
import numpy as np
import pytest

from res2net_ms.data import write_digits_imagefolder
from res2net_ms.engine import parse_run_args
from res2net_ms.models import get_model_config, list_models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo", "digits_cpu.yaml")
# One block per stage and no progress output: the demo's network, fast enough for tests.
LIGHT = ["--model_kwargs", "{layers: [1, 1, 1, 1]}", "--progress_bar", "off"]


def pytest_configure(config):
    """The test session gets its own cache folder (``$R2N_CACHE_DIR``: the compile cache's
    graphs, the CPU kernels), empty at the start and shared by both pytest-xdist workers and
    every process the tests start: a graph compiled by one test is loaded by any later one
    (entries are written whole and renamed into place, so concurrent writers are safe), and
    nothing comes from another run or checkout. The pytest-xdist controller makes it before
    it starts its workers, which inherit the variable."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        return
    folder = tempfile.mkdtemp(prefix="res2net_ms-test-cache-")
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    os.environ["R2N_CACHE_DIR"] = folder


# The costliest files, heaviest first (measured on CI). pytest-xdist's ``--dist loadfile``
# hands whole files to the workers in collection order: starting the long ones first keeps
# both workers busy to the end (the Makefile turns off xdist's own order, by test count).
HEAVY_FIRST = ("test_faults.py", "test_det_parity.py", "test_det_run.py", "test_train.py",
               "test_distributed.py", "test_bench.py", "test_models.py", "test_export.py",
               "test_convert.py", "test_compile_cache.py", "test_det_train_parity.py",
               "test_detect_cli.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# Options that only repeat or resize the ops of a block: the depth (blocks a stage), the
# width of a split and the number of splits (how often the split's 3x3 conv and add recur).
SIZE_OPTIONS = ("layers", "base_width", "scale")


def block_kind(name):
    """What decides the ops of zoo model ``name``'s graph: its network and block options."""
    cfg = get_model_config(name)
    return cfg.arch, sorted((k, v) for k, v in cfg.kwargs.items() if k not in SIZE_OPTIONS)


def _one_per_kind():
    """The first model of each kind, the 50-layer 4-split ones preferred."""
    def rank(name):
        kwargs = get_model_config(name).kwargs
        return kwargs.get("layers", (3, 4, 6, 3)) != (3, 4, 6, 3), kwargs.get("scale") != 4, name

    chosen = {}
    for name in sorted(list_models(), key=rank):
        chosen.setdefault(str(block_kind(name)), name)
    return sorted(chosen.values())


# One model per kind of block, for the sweeps that compile (graph forward/backward, ONNX):
# every other zoo model has the blocks of one of these with other sizes (asserted in
# test_models), hence no op they lack; the numbers of every model are compared with timm's.
ONE_PER_BLOCK_KIND = _one_per_kind()


def run_args(digits_dir, save_dir, *extra, base="resume"):
    """Parsed train.py arguments: the demo config on ``digits_dir``, saving to ``save_dir``."""
    return parse_run_args(["--config", DEMO, "--data_dir", digits_dir, "--ckpt_save_dir",
                           str(save_dir), *LIGHT, "--log_interval", "1000", *extra],
                          base_checkpoint=base)


def tiny_split(digits_dir, root, per_class, val_per_class=2):
    """A copy of digits' first ``per_class`` training and ``val_per_class`` validation images
    of each class (no shuffle needed)."""
    for split, count in (("train", per_class), ("val", val_per_class)):
        for cls in sorted(os.listdir(os.path.join(digits_dir, split))):
            src = os.path.join(digits_dir, split, cls)
            dst = os.path.join(root, split, cls)
            os.makedirs(dst)
            for name in sorted(os.listdir(src))[:count]:
                shutil.copy(os.path.join(src, name), dst)
    return str(root)


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
    return once_per_session(tmp_path_factory, "data", lambda folder: write_digits_imagefolder(
        str(folder / "digits"), size=32))[1]


# conftest's ``trained`` run; deterministic, so that a resume from its epoch-2 checkpoint
# must end bit for bit where it ended.
TRAINED = ["--epoch_size", "3", "--ema", "True", "--keep_checkpoint_max", "2",
           "--deterministic", "True"]


@pytest.fixture(scope="session")
def trained(digits_dir, tmp_path_factory):
    """``(summary, run folder)``: the demo's light network trained three epochs on all of the
    digits with EMA and numbered checkpoints (two kept). Trained once for the training, CAM
    and predict tests that need a real model."""
    from res2net_ms.engine import train

    def build(save_dir):
        summary = train(run_args(digits_dir, save_dir, *TRAINED))
        ms.set_context(mode=ms.PYNATIVE_MODE)
        return summary

    save_dir, summary = once_per_session(tmp_path_factory, "trained", build)
    return summary, save_dir


@pytest.fixture(scope="session")
def one_step_job(digits_dir, tmp_path_factory):
    """test_distributed's msrun job of one training step (and a validation) on 2 workers,
    with a compile cache of its own: test_distributed compares its weights with one
    worker's, test_compile_cache runs it again to see each rank load its graphs."""
    from test_distributed import run_one_step_job

    return once_per_session(tmp_path_factory, "one_step_job",
                            lambda folder: run_one_step_job(digits_dir, str(folder)))[1]


def once_per_session(tmp_path_factory, name, build):
    """``(folder, build(folder))`` made once per test session. pytest-xdist runs the session
    fixtures in each worker: there the first worker builds in the folder the workers share,
    under a lock, and the others read the JSON result it left."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        folder = tmp_path_factory.mktemp(name)
        return str(folder), build(folder)
    shared = tmp_path_factory.getbasetemp().parent
    folder, result = shared / name, shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            folder.mkdir(exist_ok=True)
            value = build(folder)
            result.write_text(json.dumps(value))
    return str(folder), json.loads(result.read_text())


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


SMALL_DETECTOR_SCALE = (320, 192)


@pytest.fixture(scope="session")
def small_detector():
    """Mask R-CNN with one block per stage (compiles in seconds), few proposals, and heads set
    so that it finds "person" and "car" boxes (the anchors: no regression) with masks filling
    them (a random mask head gives empty masks, which no ground truth can match). Shared by
    the detection command-line tests, so that it compiles once."""
    from res2net_ms.det import create_detector

    ms.set_seed(0)  # the same random weights, hence the same boxes, on every run
    detector = create_detector(
        "mask_rcnn_r2_101_fpn", backbone_kwargs=dict(layers=(1, 1, 1, 1)),
        scale=SMALL_DETECTOR_SCALE,
        test_cfg={"rpn": {"nms_pre": 200, "max_per_img": 100}, "rcnn": {"max_per_img": 20}})
    params = detector.parameters_dict()

    def scaled(name, factor, **values):
        array = params[name].asnumpy() * factor
        for index, value in values.items():
            array[int(index[1:])] = value
        params[name].set_data(ms.Tensor(array))

    for name in ("rpn_head.rpn_reg", "roi_head.bbox_head.fc_reg"):
        scaled(name + ".weight", 0)
        scaled(name + ".bias", 0)
    scaled("roi_head.bbox_head.fc_cls.bias", 1, i0=6.0, i2=6.0)  # person, car: about 0.45
    scaled("roi_head.mask_head.conv_logits.weight", 0.2)
    scaled("roi_head.mask_head.conv_logits.bias", 0, **{f"i{k}": 3.0 for k in range(80)})
    return detector
