"""The model zoo: parameter counts, graph-mode forward/backward, backbone behaviour."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

import res2net_ms
from conftest import ONE_PER_BLOCK_KIND, block_kind
from res2net_ms.models.registry import MODELS
from res2net_ms.summary import count_macs

ALL = res2net_ms.list_models()
# The representative that make test-fast compiles and checks; the rest only in the full run.
QUICK = ("res2net50_26w_4s",)


def slow_but_quick(names):
    return [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in names]


# Trainable parameters of the official PyTorch models with 1000 classes (issue 3).
PUBLISHED = {
    "res2net50_26w_4s": 25_699_120, "res2net50_48w_2s": 25_287_304,
    "res2net50_14w_8s": 25_059_816, "res2net50_26w_6s": 37_051_448,
    "res2net50_26w_8s": 48_403_776, "res2net101_26w_4s": 45_206_688,
    "res2net152_26w_4s": 61_275_248, "res2net50_v1b_26w_4s": 25_718_352,
    "res2net101_v1b_26w_4s": 45_225_920, "res2net152_v1b_26w_4s": 61_294_480,
    "res2next50": 24_671_464, "res2net_dla60": 21_145_544, "res2next_dla60": 17_330_456,
}


def n_trainable(net):
    return sum(p.size for p in net.trainable_params())


def batch(n=2, size=64, seed=0):
    return ms.Tensor(np.random.RandomState(seed).randn(n, 3, size, size).astype(np.float32))


def bn_cells(cell):
    return [c for _, c in cell.cells_and_names() if isinstance(c, nn.BatchNorm2d)]


def test_zoo_lists_every_published_variant():
    assert sorted(ALL) == sorted(PUBLISHED)
    assert {name: MODELS[name].params for name in ALL} == PUBLISHED
    aliases = res2net_ms.list_models(aliases=True)
    for alias in ("res2net50", "res2net101", "res2net152", "res2net50d", "res2net101d",
                  "res2net50_v1b", "res2net101_v1b", "res2net152_v1b"):
        assert alias in aliases


@pytest.fixture(scope="module", params=slow_but_quick(ALL))
def zoo_net(request):
    """``(name, network)``: each zoo network with its 1000 classes, built once for the checks
    of one model (pytest runs them together, then drops the network)."""
    return request.param, res2net_ms.create_model(request.param)


def test_parameter_count_equals_official(zoo_net):
    name, net = zoo_net
    assert n_trainable(net) == PUBLISHED[name] == MODELS[name].params


def test_registry_gmacs_are_what_summary_counts(zoo_net):
    """The README's GMACs column: what ``python -m res2net_ms.summary`` counts at 224 px."""
    name, net = zoo_net
    stages, head = count_macs(net, 224)
    assert round((sum(s["macs"] for s in stages) + head) / 1e9, 2) == \
        MODELS[name].counted_gmacs


def test_aliases_build_the_same_network():
    assert res2net_ms.get_model_config("res2net50d").name == "res2net50_v1b_26w_4s"
    assert n_trainable(res2net_ms.create_model("res2net101d")) == PUBLISHED["res2net101_v1b_26w_4s"]


def test_the_compiling_sweeps_cover_every_kind_of_block():
    covered = [block_kind(n) for n in ONE_PER_BLOCK_KIND]
    for name in ALL:
        assert block_kind(name) in covered, name


@pytest.mark.parametrize("zoo_net", slow_but_quick(ONE_PER_BLOCK_KIND), indirect=True)
def test_graph_mode_forward_and_backward(graph_mode, zoo_net):
    """One O2 graph per model: logits shape, and a finite non-zero gradient for every param."""
    name, net = zoo_net
    net.set_train(True)
    params = net.trainable_params()
    x = batch()
    labels = ms.Tensor(np.array([1, 5], np.int32))

    def loss_fn(inputs, target):
        logits = net(inputs)
        return ops.cross_entropy(logits, target), logits

    grad_fn = ms.value_and_grad(loss_fn, None, params, has_aux=True)
    (loss, logits), grads = grad_fn(x, labels)
    assert logits.shape == (2, 1000)
    assert np.isfinite(loss.asnumpy())
    unused = _unused_params(net)
    for p, g in zip(params, grads):
        g = g.asnumpy()
        assert np.all(np.isfinite(g)), p.name
        if p.name in unused:
            assert not np.any(g), f"{p.name} should get no gradient (its output is unused)"
        else:
            assert np.any(g), f"{p.name} got an all-zero gradient"


def _unused_params(net):
    """The official DLA builds ``project`` shortcuts in multi-level trees and never uses them."""
    from res2net_ms.models.dla import Tree

    names = set()
    for _, cell in net.cells_and_names():
        if isinstance(cell, Tree) and cell.levels > 1 and cell.project is not None:
            names |= {p.name for p in cell.project.get_parameters()}
    return names


@pytest.mark.parametrize("name", ["res2net50_26w_4s",
                                  pytest.param("res2net_dla60", marks=pytest.mark.slow)])
def test_pynative_forward_and_backward(pynative_mode, name):
    net = res2net_ms.create_model(name, num_classes=3)
    net.set_train(True)
    grad_fn = ms.value_and_grad(lambda x: net(x).sum(), None, net.trainable_params())
    loss, grads = grad_fn(batch(size=32))
    assert np.isfinite(loss.asnumpy())
    assert len(grads) == len(net.trainable_params())


# Two blocks a stage for the graph-mode shape tests: a stage's first block (stride,
# projection, dilation) and a later one; the shapes do not depend on the depth.
TWO_A_STAGE = {"layers": (2, 2, 2, 2)}


@pytest.mark.slow
@pytest.mark.parametrize("name, channels, reductions", [
    ("res2net50_26w_4s", (64, 256, 512, 1024, 2048), (2, 4, 8, 16, 32)),
    ("res2net101_v1b_26w_4s", (64, 256, 512, 1024, 2048), (2, 4, 8, 16, 32)),
    ("res2next_dla60", (16, 32, 128, 256, 512, 1024), (1, 2, 4, 8, 16, 32)),
])
def test_features_only_shapes_and_strides(graph_mode, name, channels, reductions):
    size = 64
    depth = {} if "dla" in name else TWO_A_STAGE
    info = res2net_ms.create_model(name, features_only=True).feature_info
    assert [f["num_chs"] for f in info] == list(channels)
    assert [f["reduction"] for f in info] == list(reductions)
    out_indices = tuple(range(len(channels)))
    net = res2net_ms.create_model(name, features_only=True, out_indices=out_indices, **depth)
    net.set_train(False)
    feats = net(batch(size=size))
    assert [tuple(f.shape) for f in feats] == [
        (2, c, size // r, size // r) for c, r in zip(channels, reductions)]
    assert not any(p.name.startswith("fc.") for p in net.get_parameters())


@pytest.mark.slow
def test_features_only_default_returns_the_four_stages(graph_mode):
    net = res2net_ms.create_model("res2net50_26w_4s", features_only=True, **TWO_A_STAGE)
    net.set_train(False)
    feats = net(batch(size=64))
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048]
    assert [f.shape[2] for f in feats] == [16, 8, 4, 2]


@pytest.mark.slow
@pytest.mark.parametrize("output_stride, sizes", [(16, (16, 8, 4, 4)), (8, (16, 8, 8, 8))])
def test_output_stride_dilates_last_stages(graph_mode, output_stride, sizes):
    net = res2net_ms.create_model("res2net50_v1b_26w_4s", features_only=True,
                                  output_stride=output_stride, **TWO_A_STAGE)
    net.set_train(False)
    feats = net(batch(size=64))
    assert [f.shape[2] for f in feats] == list(sizes)
    assert [f["reduction"] for f in net.feature_info][1:] == [64 // s for s in sizes]
    assert n_trainable(net) == n_trainable(
        res2net_ms.create_model("res2net50_v1b_26w_4s", features_only=True, **TWO_A_STAGE))


def test_frozen_stages_freeze_params_and_bn(pynative_mode):
    net = res2net_ms.create_model("res2net101_v1b_26w_4s", features_only=True,
                                  out_indices=(1, 2, 3, 4), frozen_stages=1, norm_eval=False)
    frozen = [c for i in (0, 1) for c in net.stage_cells(i)]
    frozen_names = {p.name for c in frozen for p in c.get_parameters()}
    assert frozen_names and all(n.startswith(("conv1", "bn1", "layer1.")) for n in frozen_names)
    assert {p.name for p in net.trainable_params()}.isdisjoint(frozen_names)
    assert any(p.name.startswith("layer2.") for p in net.trainable_params())

    # Re-applied on every set_train, also when a wrapper cell puts the network in training.
    wrapper = nn.WithLossCell(net, nn.MSELoss())
    for cell in (net, wrapper):
        cell.set_train(True)
        assert all(not bn.training for c in frozen for bn in bn_cells(c))
        assert all(bn.training for bn in bn_cells(net.layer2))

    stem_bn = net.bn1
    layer2_bn = net.layer2[0].bn1
    before = stem_bn.moving_mean.asnumpy().copy(), layer2_bn.moving_mean.asnumpy().copy()
    net(batch(size=32))
    assert np.array_equal(stem_bn.moving_mean.asnumpy(), before[0])
    assert not np.array_equal(layer2_bn.moving_mean.asnumpy(), before[1])


def test_norm_eval_keeps_every_bn_in_inference(pynative_mode):
    net = res2net_ms.create_model("res2net50_26w_4s", num_classes=4, norm_eval=True)
    net.set_train(True)
    assert all(not bn.training for bn in bn_cells(net))
    assert n_trainable(net) == n_trainable(res2net_ms.create_model("res2net50_26w_4s",
                                                                   num_classes=4))
    x = batch(size=32)
    train_out = net(x).asnumpy()
    net.set_train(False)
    np.testing.assert_allclose(train_out, net(x).asnumpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_drop_path_changes_training_outputs_only(pynative_mode):
    ms.set_seed(0)
    plain = res2net_ms.create_model("res2net50_48w_2s", num_classes=5)
    dropped = res2net_ms.create_model("res2net50_48w_2s", num_classes=5, drop_path_rate=0.5)
    ms.load_param_into_net(dropped, {p.name: p for p in plain.get_parameters()})
    x = batch(n=4, size=32)
    for net in (plain, dropped):
        net.set_train(True)
        for bn in bn_cells(net):
            bn.add_flags(training=False)  # keep BN deterministic: only drop_path differs
    out_plain = plain(x).asnumpy()
    out_a, out_b = dropped(x).asnumpy(), dropped(x).asnumpy()
    assert not np.allclose(out_a, out_plain)
    assert not np.allclose(out_a, out_b)
    plain.set_train(False)
    dropped.set_train(False)
    np.testing.assert_array_equal(plain(x).asnumpy(), dropped(x).asnumpy())


def test_reset_classifier_and_heads(pynative_mode):
    net = res2net_ms.create_model("res2next50", num_classes=10)
    net.set_train(False)
    x = batch(size=32)
    feats = net.forward_features(x)
    assert feats.shape == (2, 2048, 1, 1)
    assert net.forward_head(feats, pre_logits=True).shape == (2, 2048)
    net.reset_classifier(3)
    assert net(x).shape == (2, 3)
    net.reset_classifier(0)
    assert net(x).shape == (2, 2048)


def test_in_channels_and_drop_rate():
    net = res2net_ms.create_model("res2net50_v1b_26w_4s", in_channels=1, drop_rate=0.2)
    assert net.conv1[0].weight.shape == (32, 1, 3, 3)
    net.set_train(False)
    assert net(ms.Tensor(np.zeros((1, 1, 32, 32), np.float32))).shape == (1, 1000)


def test_model_config_fields():
    cfg = res2net_ms.get_model_config("res2net50d")
    assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 0.875
    assert cfg.first_conv == "conv1.0.weight" and cfg.classifier == "fc"
    assert cfg.weights == "res2net50_v1b_26w_4s-3cf99910.pth" and cfg.url.endswith(cfg.weights)
    assert (cfg.top1, cfg.top5) == (80.27, 95.04)
    for name in ALL:
        cfg = res2net_ms.get_model_config(name)
        assert cfg.mean == (0.485, 0.456, 0.406) and cfg.interpolation == "bilinear"


@pytest.mark.parametrize("kwargs, match", [
    (dict(scale=0), "scale must be >= 1"),
    (dict(out_indices=(1, 5), features_only=True), r"out_indices \(1, 5\) out of range"),
    (dict(output_stride=4), "output_stride must be 8, 16 or 32"),
    (dict(frozen_stages=5), "frozen_stages=5 out of range"),
])
def test_impossible_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        res2net_ms.create_model("res2net50_26w_4s", **kwargs)


def test_dla_rejects_output_stride():
    with pytest.raises(ValueError, match="not supported by DLA"):
        res2net_ms.create_model("res2net_dla60", output_stride=16)


def test_unknown_model_names_closest():
    with pytest.raises(ValueError, match="unknown model 'res2net50_26w4s'.*res2net50_26w_4s"):
        res2net_ms.create_model("res2net50_26w4s")


@pytest.mark.parametrize("channels", [1, 5])
def test_rgb_weights_adapt_to_other_input_channels(pynative_mode, tmp_path, channels):
    """timm's adapt_input_conv: a grey image through the 1-channel model equals the same
    image repeated on RGB through the original; more channels tile RGB and rescale."""
    from res2net_ms.ckpt import save_ckpt

    rgb = res2net_ms.create_model("res2net50_26w_4s", num_classes=4, layers=(1, 1, 1, 1))
    rgb.set_train(False)
    path = tmp_path / "rgb.ckpt"
    save_ckpt({p.name: p.asnumpy() for p in rgb.get_parameters()}, path)
    net = res2net_ms.create_model("res2net50_26w_4s", num_classes=4, layers=(1, 1, 1, 1),
                                  in_channels=channels, checkpoint_path=path)
    net.set_train(False)
    assert "adapted to" in " ".join(net.load_report.notes)
    w = rgb.conv1.weight.asnumpy()
    if channels == 1:
        np.testing.assert_allclose(net.conv1.weight.asnumpy(), w.sum(1, keepdims=True),
                                   rtol=1e-6)
        grey = np.random.RandomState(0).rand(2, 1, 32, 32).astype(np.float32)
        np.testing.assert_allclose(net(ms.Tensor(grey)).asnumpy(),
                                   rgb(ms.Tensor(np.repeat(grey, 3, axis=1))).asnumpy(),
                                   rtol=1e-4, atol=1e-4)
    else:
        expected = np.concatenate([w, w[:, :2]], axis=1) * 3 / 5
        np.testing.assert_allclose(net.conv1.weight.asnumpy(), expected, rtol=1e-6)
