"""Networks and checkpoints for the predict / export / Grad-CAM tests, made without training.

``light_checkpoint`` writes what train.py writes for the demo's light network (one block per
stage, 10 digit classes, 32 px, mean/std 127.5): the weights with random BatchNorm statistics
(so that folding them is really tested), the run's resolved config and class names.
"""
import mindspore as ms
import numpy as np
from mindspore import nn

import res2net_ms
from conftest import run_args
from res2net_ms.config import config_to_yaml, resolve_model_defaults
from res2net_ms.run_state import RunState, save_training_checkpoint

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LIGHT_KWARGS = dict(layers=(1, 1, 1, 1))


def randomise_bn(net, seed=0):
    """Random BN scales, shifts and running statistics (fresh ones are an identity)."""
    rs = np.random.RandomState(seed)
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            n = cell.gamma.shape[0]
            for param, low, high in ((cell.gamma, 0.5, 1.5), (cell.beta, -0.2, 0.2),
                                     (cell.moving_mean, -0.5, 0.5),
                                     (cell.moving_variance, 0.5, 2.0)):
                param.set_data(ms.Tensor(rs.uniform(low, high, n).astype(np.float32)))
    return net


def light_network(name="res2net50_26w_4s", num_classes=10, seed=0, **kwargs):
    ms.set_seed(seed)
    net = res2net_ms.create_model(name, num_classes=num_classes, **{**LIGHT_KWARGS, **kwargs})
    net.set_train(False)
    return randomise_bn(net, seed)


def light_checkpoint(digits_dir, path, seed=0, classes=CLASSES, ema_seed=None):
    """A training checkpoint of the demo's light network, as train.py stores it; with
    ``ema_seed`` it also holds EMA weights (another random network's)."""
    args = resolve_model_defaults(run_args(digits_dir, str(path) + ".run"))
    net = light_network(args.model, args.num_classes, seed)
    params = list(net.get_parameters())
    if ema_seed is not None:
        ema = light_network(args.model, args.num_classes, ema_seed)
        params += [ms.Parameter(p.data, name="ema." + p.name) for p in ema.get_parameters()]
    state = RunState(model=args.model, config=config_to_yaml(args), classes=list(classes),
                     has_ema=ema_seed is not None, epoch=1, global_step=1, best_top1=0.0,
                     best_epoch=1)
    save_training_checkpoint(str(path), params, state)
    return str(path), net
