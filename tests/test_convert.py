"""Converter parity: PyTorch (timm/official, mmpretrain, mmdet), safetensors and mindcv weights
give the same outputs in our networks as in the PyTorch models they came from."""
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

import res2net_ms
from conftest import randomised_torch
from res2net_ms.convert import (CheckpointMismatchError, UnsafeCheckpointError,
                                convert_checkpoint, read_state, save_ckpt)
from res2net_ms.convert.__main__ import main as convert_cli
from res2net_ms.convert.layouts import official_to_ours, ours_to_official

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
from timm.models.res2net import Bottle2neck as TimmBottle2neck  # noqa: E402
from timm.models.resnet import ResNet as TimmResNet  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMM_TO_OURS = {
    "res2net50_26w_4s": "res2net50_26w_4s", "res2net50_48w_2s": "res2net50_48w_2s",
    "res2net50_14w_8s": "res2net50_14w_8s", "res2net50_26w_6s": "res2net50_26w_6s",
    "res2net50_26w_8s": "res2net50_26w_8s", "res2net101_26w_4s": "res2net101_26w_4s",
    "res2next50": "res2next50", "res2net50d": "res2net50_v1b_26w_4s",
    "res2net101d": "res2net101_v1b_26w_4s",
}


@pytest.fixture(autouse=True)
def _pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)


def timm_model(name, num_classes=10, **kwargs):
    return randomised_torch(timm.create_model(name, num_classes=num_classes, **kwargs))


def timm_res2net152(v1b):
    deep = dict(stem_type="deep", stem_width=32, avg_down=True) if v1b else {}
    model = TimmResNet(block=TimmBottle2neck, layers=[3, 8, 36, 3], base_width=26,
                       block_args=dict(scale=4), num_classes=10, **deep)
    return randomised_torch(model)


def images(size=96, n=2, seed=1):
    return np.random.RandomState(seed).randn(n, 3, size, size).astype(np.float32)


def torch_logits(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def ours(net, x):
    net.set_train(False)
    out = net(ms.Tensor(x))
    return [o.asnumpy() for o in out] if isinstance(out, tuple) else out.asnumpy()


def assert_close(actual, expected):
    err = np.abs(actual - expected).max()
    assert err <= 1e-4 * np.abs(expected).max(), f"max |delta| {err} vs {np.abs(expected).max()}"


def convert_with_cli(tmp_path, src, model, *extra):
    out = tmp_path / "converted.ckpt"
    assert convert_cli([str(src), "--model", model, "--out", str(out), *extra]) == 0
    return out


# res2net50_26w_4s: test_command_line_subprocess_and_graph_mode (the same check, in a fresh
# process and in graph mode).
@pytest.mark.parametrize("timm_name", [
    n if n in ("res2net50_48w_2s", "res2net50d", "res2next50")
    else pytest.param(n, marks=pytest.mark.slow)
    for n in sorted(TIMM_TO_OURS) if n != "res2net50_26w_4s"])
def test_timm_parity(tmp_path, timm_name):
    ref = timm_model(timm_name)
    src = tmp_path / f"{timm_name}.pth"
    torch.save(ref.state_dict(), src)
    ckpt = convert_with_cli(tmp_path, src, TIMM_TO_OURS[timm_name])
    net = res2net_ms.create_model(TIMM_TO_OURS[timm_name], num_classes=10, checkpoint_path=ckpt)
    x = images()
    assert_close(ours(net, x), torch_logits(ref, x))


@pytest.mark.slow
@pytest.mark.parametrize("v1b, name", [(False, "res2net152_26w_4s"),
                                       (True, "res2net152_v1b_26w_4s")])
def test_152_layer_parity_against_timm_resnet_with_res2net_blocks(tmp_path, v1b, name):
    ref = timm_res2net152(v1b)
    src = tmp_path / "r152.pth"
    torch.save(ref.state_dict(), src)
    net = res2net_ms.create_model(name, num_classes=10, checkpoint_path=src)
    x = images(size=64)
    assert_close(ours(net, x), torch_logits(ref, x))


def test_output_stride_8_parity(tmp_path):
    ref = timm_model("res2net50d", output_stride=8)
    src = tmp_path / "r50d.pth"
    torch.save(ref.state_dict(), src)
    net = res2net_ms.create_model("res2net50d", num_classes=10, output_stride=8,
                                  checkpoint_path=src)
    x = images(size=64)
    assert_close(ours(net, x), torch_logits(ref, x))


@pytest.mark.slow
def test_command_line_subprocess_and_graph_mode(tmp_path):
    ref = timm_model("res2net50_26w_4s")
    src = tmp_path / "official.pth"
    torch.save(ref.state_dict(), src)
    out = tmp_path / "r2n50.ckpt"
    run = subprocess.run([sys.executable, "-m", "res2net_ms.convert", str(src), "--model",
                          "res2net50_26w_4s", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "official layout" in run.stdout and "mapped:     427 tensors" in run.stdout
    assert "85 num_batches_tracked" in run.stdout
    assert "Exception ignored" not in run.stderr
    ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": "O2"})
    try:
        net = res2net_ms.create_model("res2net50_26w_4s", num_classes=10, checkpoint_path=out)
        x = images()
        assert_close(ours(net, x), torch_logits(ref, x))
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


def mmpretrain_state(official, deep_stem):
    """Lay an official state dict out as mmpretrain's ImageClassifier saves it."""
    stem = {"conv1.0.": "stem.0.conv.", "conv1.1.": "stem.0.bn.", "conv1.3.": "stem.1.conv.",
            "conv1.4.": "stem.1.bn.", "conv1.6.": "stem.2.conv.", "bn1.": "stem.2.bn."}
    out = {}
    for key, value in official.items():
        if key.startswith("fc."):
            out["head." + key] = value
            continue
        for src, dst in (stem.items() if deep_stem else ()):
            if key.startswith(src):
                key = dst + key[len(src):]
                break
        out["backbone." + key] = value
    return {"meta": {"mmpretrain_version": "1.2.0", "epoch": 100}, "state_dict": out}


@pytest.mark.slow
@pytest.mark.parametrize("timm_name", ["res2net50_14w_8s", "res2net50d"])
def test_mmpretrain_layout(tmp_path, timm_name):
    ref = timm_model(timm_name)
    src = tmp_path / "mmpretrain.pth"
    torch.save(mmpretrain_state(ref.state_dict(), deep_stem=timm_name.endswith("d")), src)
    weights, report = convert_checkpoint(src, TIMM_TO_OURS[timm_name], tmp_path / "o.ckpt")
    assert report.layout == "mmpretrain" and not report.missing
    net = res2net_ms.create_model(TIMM_TO_OURS[timm_name], num_classes=10,
                                  checkpoint_path=tmp_path / "o.ckpt")
    x = images()
    assert_close(ours(net, x), torch_logits(ref, x))


def mmdet_detector_state(official):
    """An mmdetection detector checkpoint: renamed deep stem under ``backbone.``, plus heads."""
    stem = {"conv1.0.": "stem.0.", "conv1.1.": "stem.1.", "conv1.3.": "stem.3.",
            "conv1.4.": "stem.4.", "conv1.6.": "stem.6.", "bn1.": "stem.7."}
    out = {}
    for key, value in official.items():
        if key.startswith("fc."):
            continue
        for src, dst in stem.items():
            if key.startswith(src):
                key = dst + key[len(src):]
                break
        out["backbone." + key] = value
    out["neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 256, 1, 1)
    out["rpn_head.rpn_cls.weight"] = torch.zeros(3, 256, 1, 1)
    return {"meta": {}, "state_dict": out}


def torch_stages(model, x):
    """The four stage outputs of a timm ResNet-shaped model."""
    with torch.no_grad():
        x = model.maxpool(model.act1(model.bn1(model.conv1(torch.from_numpy(x)))))
        outs = []
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            x = layer(x)
            outs.append(x.numpy())
    return outs


@pytest.mark.slow
def test_mmdet_layout_converts_backbone_with_mmdets_stage_pool(tmp_path):
    ref = timm_model("res2net101d")
    torch.save(ref.state_dict(), tmp_path / "official.pth")
    torch.save(mmdet_detector_state(ref.state_dict()), tmp_path / "mmdet.pth")
    weights, report = convert_checkpoint(tmp_path / "mmdet.pth", "res2net101_v1b_26w_4s",
                                         tmp_path / "mmdet.ckpt")
    assert report.layout == "mmdet"
    assert any("stride1_pool=False" in note for note in report.notes)
    assert not any(k.startswith("fc.") for k in weights)
    assert len(report.dropped["non-backbone (neck/heads)"]) == 2
    kwargs = dict(features_only=True, out_indices=(1, 2, 3, 4))
    from_official = res2net_ms.create_model("res2net101d",
                                            checkpoint_path=tmp_path / "official.pth", **kwargs)
    assert from_official.layer1[0].pool is not None  # official weights: official network
    ref.layer1[0].pool = None  # mmdetection's Res2Net: no stage pool where the stride is 1
    x = images(size=64)
    expected = torch_stages(ref, x)
    for src in ("mmdet.pth", "mmdet.ckpt"):  # the option is selected from either file
        from_mmdet = res2net_ms.create_model("res2net101d", checkpoint_path=tmp_path / src,
                                             **kwargs)
        assert from_mmdet.layer1[0].pool is None and from_mmdet.layer2[0].pool is not None
        for a, b in zip(ours(from_mmdet, x), expected):
            assert_close(a, b)


def test_module_prefix_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    ref = timm_model("res2net50_48w_2s")
    state = ref.state_dict()
    torch.save({"model": {"module." + k: v for k, v in state.items()}}, tmp_path / "ddp.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "m.safetensors"))
    x = images()
    expected = torch_logits(ref, x)
    for src in ("ddp.pth", "m.safetensors"):
        net = res2net_ms.create_model("res2net50_48w_2s", num_classes=10,
                                      checkpoint_path=tmp_path / src)
        assert_close(ours(net, x), expected)


def mindcv_ckpt(official, path):
    """Save an official v1b state dict as a mindcv training checkpoint (names and extras)."""
    ours_names = official_to_ours({k: v.numpy() for k, v in official.items()
                                   if not k.endswith("num_batches_tracked")})
    params = []
    for key, value in ours_names.items():
        key = key.replace(".downsample.", ".down_sample.").replace("fc.", "classifier.")
        if key.startswith("layer1.0.down_sample."):  # mindcv has no pool cell here
            index = int(key.split(".")[3])
            key = f"layer1.0.down_sample.{index - 1}." + key.split(".", 4)[4]
        params.append({"name": key, "data": ms.Tensor(value)})
        params.append({"name": "moments." + key, "data": ms.Tensor(np.zeros_like(value))})
    params.append({"name": "global_step", "data": ms.Tensor(np.array([10], np.int32))})
    params.append({"name": "learning_rate", "data": ms.Tensor(np.array([0.1], np.float32))})
    ms.save_checkpoint(params, str(path))


@pytest.mark.slow
def test_mindcv_checkpoint(tmp_path):
    ref = timm_model("res2net50d")
    mindcv_ckpt(ref.state_dict(), tmp_path / "res2net50_v1b-mindcv.ckpt")
    weights, report = convert_checkpoint(tmp_path / "res2net50_v1b-mindcv.ckpt",
                                         "res2net50_v1b", tmp_path / "o.ckpt")
    assert report.layout == "mindcv" and report.mapped == 437
    assert len(report.dropped["training state"]) == 437 + 2
    net = res2net_ms.create_model("res2net50_v1b", num_classes=10,
                                  checkpoint_path=tmp_path / "o.ckpt")
    x = images()
    assert_close(ours(net, x), torch_logits(ref, x))


@pytest.mark.parametrize("name", ["res2net_dla60", "res2next_dla60", pytest.param(
    "res2net152_v1b_26w_4s", marks=pytest.mark.slow)])
def test_official_layout_key_by_key(tmp_path, name):
    """No pip package holds these: an official-layout state dict maps back value for value."""
    net = res2net_ms.create_model(name)
    ours_state = {p.name: p.asnumpy() + 0.01 * i for i, p in enumerate(net.get_parameters())}
    official = ours_to_official(ours_state)
    if name.endswith("dla60"):  # the official DLA classifier is a 1x1 conv
        official["fc.weight"] = official["fc.weight"][:, :, None, None]
        assert any(k.startswith("level4.tree2.tree1.root.") for k in official)
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in official.items()},
               tmp_path / "official.pth")
    weights, report = convert_checkpoint(tmp_path / "official.pth", name)
    assert sorted(weights) == sorted(ours_state)
    for key, value in ours_state.items():
        np.testing.assert_array_equal(weights[key], value, err_msg=key)


@pytest.mark.parametrize("timm_name, model", [("res2next50", "res2next50"),
                                              (None, "res2net_dla60")])
def test_round_trip_to_torch(tmp_path, timm_name, model):
    if timm_name:
        ref = timm_model(timm_name)
        torch.save(ref.state_dict(), tmp_path / "src.pth")
    else:
        net = res2net_ms.create_model(model, num_classes=10)
        official = ours_to_official({p.name: p.asnumpy() for p in net.get_parameters()})
        official["fc.weight"] = official["fc.weight"][:, :, None, None]
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in official.items()},
                   tmp_path / "src.pth")
    convert_checkpoint(tmp_path / "src.pth", model, tmp_path / "ours.ckpt")
    assert convert_cli([str(tmp_path / "ours.ckpt"), "--model", model,
                        "--to-torch", str(tmp_path / "back.safetensors")]) == 0
    original = read_state(tmp_path / "src.pth")
    back = read_state(tmp_path / "back.safetensors")
    assert sorted(back) == sorted(original)
    for key, value in original.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[key], value, err_msg=key)
    if timm_name:
        from safetensors.torch import load_file

        fresh = timm.create_model(timm_name, num_classes=10).eval()
        fresh.load_state_dict(load_file(str(tmp_path / "back.safetensors")), strict=True)
        x = images(size=64)
        np.testing.assert_array_equal(torch_logits(fresh, x), torch_logits(ref, x))


@pytest.mark.slow
def test_strict_mismatch_names_the_fitting_model_and_writes_nothing(tmp_path):
    torch.save(timm_model("res2net50d").state_dict(), tmp_path / "r50d.pth")
    out = tmp_path / "wrong.ckpt"
    with pytest.raises(CheckpointMismatchError,
                       match=r"does not fit res2net50_26w_4s.*missing conv1\.weight.*"
                             r"the checkpoint fits res2net50_v1b_26w_4s"):
        convert_checkpoint(tmp_path / "r50d.pth", "res2net50_26w_4s", out)
    assert not out.exists()
    with pytest.raises(CheckpointMismatchError, match="does not fit res2net50_26w_4s"):
        res2net_ms.create_model("res2net50_26w_4s", checkpoint_path=tmp_path / "r50d.pth")


def test_num_classes_and_drop_head(tmp_path):
    torch.save(timm_model("res2next50").state_dict(), tmp_path / "x.pth")
    weights, report = convert_checkpoint(tmp_path / "x.pth", "res2next50", num_classes=3)
    assert weights["fc.weight"].shape == (3, 2048) and "re-initialised" in report.notes[0]
    weights, report = convert_checkpoint(tmp_path / "x.pth", "res2next50", drop_head=True)
    assert not any(k.startswith("fc.") for k in weights)
    net = res2net_ms.create_model("res2next50", num_classes=7, checkpoint_path=tmp_path / "x.pth")
    assert "re-initialised" in net.load_report.notes[-1]
    assert net.fc.weight.shape == (7, 2048)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_by_the_cli(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"conv1.weight": torch.zeros(1), "evil": _Exploit(marker)}, tmp_path / "evil.pth")
    assert convert_cli([str(tmp_path / "evil.pth"), "--model", "res2net50",
                        "--out", str(tmp_path / "o.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused global" in err and "system" in err
    assert not marker.exists() and not (tmp_path / "o.ckpt").exists()
    with pytest.raises(UnsafeCheckpointError):
        res2net_ms.create_model("res2net50", checkpoint_path=tmp_path / "evil.pth")


def test_corrupt_inputs_give_one_line_errors(tmp_path, capsys):
    torch.save(timm_model("res2net50_26w_4s").state_dict(), tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "bad.ckpt").write_bytes(b"\x00garbage" * 100)
    for name in ("cut.pth", "bad.ckpt", "missing.pth"):
        assert convert_cli([str(tmp_path / name), "--model", "res2net50",
                            "--out", str(tmp_path / "o.ckpt")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        assert name in err
    assert not (tmp_path / "o.ckpt").exists()


def test_save_ckpt_is_atomic_and_loadable(tmp_path):
    weights = {"a.weight": np.ones((2, 2), np.float32)}
    save_ckpt(weights, tmp_path / "w.ckpt")
    assert sorted(os.listdir(tmp_path)) == ["w.ckpt"]
    np.testing.assert_array_equal(read_state(tmp_path / "w.ckpt")["a.weight"], weights["a.weight"])


def test_conversion_never_imports_torch(tmp_path):
    torch.save(timm_model("res2net50_48w_2s").state_dict(), tmp_path / "m.pth")
    code = ("import sys, res2net_ms\n"
            "from res2net_ms.convert import convert_checkpoint, export_torch\n"
            f"convert_checkpoint({str(tmp_path / 'm.pth')!r}, 'res2net50_48w_2s', "
            f"{str(tmp_path / 'm.ckpt')!r})\n"
            f"export_torch({str(tmp_path / 'm.ckpt')!r}, {str(tmp_path / 'b.safetensors')!r})\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "import os; os._exit(0)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
