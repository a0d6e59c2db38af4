"""The process's set-up for a run: device, execution mode, determinism, communication, seeds."""
import random

import mindspore as ms
import numpy as np
from mindspore.communication import get_group_size, get_rank, init

from ..config import ConfigError
from ..process import launched_by_launcher, warn_slow_mindspore

__all__ = ["setup_context", "seed_everything"]


def setup_context(args):
    """Device, execution mode, (with ``distribute``) communication and seeds; returns
    ``(rank, group_size)``. Nothing is compiled here."""
    if args.distribute and not launched_by_launcher():
        raise ConfigError("distribute is True but no launcher started this process: run it "
                          "under msrun (msrun --worker_num N python train.py ...) or mpirun, "
                          "or pass --distribute False for one device")
    # MindSpore refuses set_device once a kernel has run, even to the same device.
    if args.device_target not in ("auto", ms.get_context("device_target")):
        ms.set_device(args.device_target)
    if args.mode == 0:
        ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": args.jit_level})
    else:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    if args.deterministic and ms.get_context("deterministic") != "ON":
        ms.set_deterministic(True)  # MindSpore refuses a second call in one process
    rank, group_size = 0, 1
    if args.distribute:
        init()
        rank, group_size = get_rank(), get_group_size()
        ms.reset_auto_parallel_context()
        ms.set_auto_parallel_context(device_num=group_size, gradients_mean=True,
                                     parallel_mode=ms.ParallelMode.DATA_PARALLEL)
    seed_everything(args.seed)
    warn_slow_mindspore(device_target=ms.get_context("device_target"))
    return rank, group_size


def seed_everything(seed):
    """The same seed on every rank: data-parallel replicas must start from equal weights."""
    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)
