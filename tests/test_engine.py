"""Pieces of the training engine that need no training run: optimizer groups, AMP lists."""
import numpy as np
import pytest
from mindcv.utils import amp as mindcv_amp
from mindspore import nn

from res2net_ms.config import ConfigError, parse_args, resolve_model_defaults
from res2net_ms.engine.network import build_network
from res2net_ms.engine.train_step import build_train_step, mixed_precision

LIGHT_NET = ["--model_kwargs", "{layers: [1, 1, 1, 1]}", "--num_classes", "10",
             "--amp_level", "O0", "--epoch_size", "2", "--warmup_epochs", "0"]


def test_layer_decay_scales_the_learning_rate_by_depth():
    args = resolve_model_defaults(parse_args([*LIGHT_NET, "--layer_decay", "0.5", "--opt",
                                              "momentum"]))
    parts = build_train_step(args, build_network(args), 4, 1)
    lr = {p.name: rate.learning_rate.asnumpy() for p, rate in
          zip(parts.optimizer.parameters, parts.optimizer.learning_rate)}
    steps = len(parts.lr_values)  # the table the graph holds is padded with the last rate
    np.testing.assert_allclose(lr["fc.weight"][:steps], parts.lr_values, rtol=1e-6)
    assert np.all(lr["fc.weight"][steps:] == lr["fc.weight"][steps - 1])
    # stem, then layer1..4: one group each (one block per stage), the classifier last
    for name, depth in (("conv1.weight", 0), ("layer1.0.conv1.weight", 1),
                        ("layer4.0.conv3.weight", 4)):
        np.testing.assert_allclose(lr[name], lr["fc.weight"] * 0.5 ** (5 - depth), rtol=1e-6)


def _kept_in_float32(net):
    """The cell types O2 keeps in float32 (wrapped to cast their output back to float16)."""
    return {type(c._op) for _, c in net.cells_and_names()
            if isinstance(c, mindcv_amp._OutputTo16)}


@pytest.mark.parametrize("cast_list, kept", [(None, nn.BatchNorm2d), ("[nn.Dense]", nn.Dense)])
def test_amp_cast_list_replaces_mindcv_lists(cast_list, kept):
    args = resolve_model_defaults(parse_args(LIGHT_NET))
    net = build_network(args)
    mixed_precision(net, "O2", cast_list)
    assert _kept_in_float32(net) == {kept}


def test_amp_cast_list_is_parsed_not_evaluated():
    args = resolve_model_defaults(parse_args(LIGHT_NET))
    with pytest.raises(ConfigError, match="not a mindspore.nn cell"):
        mixed_precision(build_network(args), "O2", "[__import__('os').system('true')]")
