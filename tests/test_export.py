"""BatchNorm folding, the export form, MINDIR and ONNX files that compute the network's logits
(every zoo model), timm .pth -> convert -> ONNX -> onnxruntime, and one-line export errors."""
import glob
import json
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

import res2net_ms
from conftest import ONE_PER_BLOCK_KIND, random_images, randomised_torch
from inference_helpers import CLASSES, light_checkpoint, light_network, randomise_bn
from res2net_ms.export import TOLERANCE, export, run_exported
from res2net_ms.export import main as export_main
from res2net_ms.inference import MINDIR_KEY, LoadedModel, Preprocess, load_model
from res2net_ms.models import ExplicitPadPool, export_form, fuse_bn, get_model_config
from res2net_ms.models.kernels import Pool3x3
from res2net_ms.predict import predict

ort = pytest.importorskip("onnxruntime")


def rel_diff(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def bn_count(net):
    return sum(isinstance(c, nn.BatchNorm2d) for _, c in net.cells_and_names())


@pytest.mark.parametrize("name, kwargs, size", [
    ("res2net50_26w_4s", {}, 64),
    ("res2net50_v1b_26w_4s", {}, 65),  # deep stem, average-pool shortcut, odd size
    pytest.param("res2next50", {"output_stride": 8}, 64,  # grouped, dilated
                 marks=pytest.mark.slow),
    ("res2next_dla60", {"levels": (1, 1, 1, 2, 1, 1)}, 64),  # DLA trees, roots
])
def test_fuse_bn_and_export_form_keep_the_logits(pynative_mode, name, kwargs, size):
    net = light_network(name, **kwargs) if name.startswith("res2net50") else \
        randomise_bn(res2net_ms.create_model(name, num_classes=10, **kwargs))
    net.set_train(False)
    x = ms.Tensor(random_images(2, size))
    expected = net(x).asnumpy()
    convs = {c.weight.name for _, c in net.cells_and_names() if isinstance(c, nn.Conv2d)}
    folded = fuse_bn(net)
    assert folded is net and bn_count(net) == 0
    after = {p.name for p in net.get_parameters()}
    assert convs <= after  # the convs keep their names and gain biases
    assert after - convs == {n[:-len("weight")] + "bias" for n in convs} | {"fc.weight", "fc.bias"}
    assert rel_diff(net(x).asnumpy(), expected) <= 1e-5
    export_form(net)
    assert not any(isinstance(c, Pool3x3) for _, c in net.cells_and_names())
    assert rel_diff(net(x).asnumpy(), expected) <= 1e-5


def test_explicit_pad_pool_is_the_padded_pool_for_negative_input(pynative_mode):
    x = ms.Tensor(random_images(2, 9) - 3.0)  # all negative: zero padding would win the max
    for kind, stride in (("max", 2), ("max", 1), ("avg", 2), ("avg", 1)):
        padded = nn.MaxPool2d(3, stride, pad_mode="pad", padding=1) if kind == "max" else \
            nn.AvgPool2d(3, stride, pad_mode="pad", padding=1, count_include_pad=True)
        np.testing.assert_allclose(ExplicitPadPool(kind, stride)(x).asnumpy(),
                                   padded(x).asnumpy(), rtol=0, atol=1e-6)


def test_fuse_bn_refuses_a_batch_norm_without_a_conv():
    net = nn.SequentialCell([nn.ReLU(), nn.BatchNorm2d(4)])
    with pytest.raises(ValueError, match="no conv before it"):
        fuse_bn(net)


@pytest.fixture(scope="module")
def checkpoint(digits_dir, tmp_path_factory):
    return light_checkpoint(digits_dir, tmp_path_factory.mktemp("ckpt") / "light.ckpt")


def _export_cli(capsys, *argv):
    code = export_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_mindir_round_trip_and_predict_from_it(checkpoint, digits_dir, tmp_path, capsys):
    """``--out digits`` writes ``digits.mindir``, as ``mindspore.export`` would name it: a file
    called ``digits`` is one that ``mindspore.load`` refuses. (One export serves both checks.)"""
    path, net = checkpoint
    out = tmp_path / "digits.mindir"
    code, stdout, err = _export_cli(capsys, "--ckpt_path", path, "--format", "MINDIR",
                                    "--batch", 4, "--out", tmp_path / "digits")
    assert code == 0, err
    assert f"wrote {out} (MINDIR" in stdout and "input (4, 3, 32, 32)" in stdout
    assert "checked with mindspore.load + nn.GraphCell" in stdout
    assert os.listdir(tmp_path) == ["digits.mindir"]
    os.link(out, tmp_path / "digits")
    with pytest.raises(ValueError, match="should end with '.mindir'"):
        ms.load(str(tmp_path / "digits"))
    x = random_images(4, 32, seed=3)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    expected = net(ms.Tensor(x)).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = nn.GraphCell(ms.load(str(out)))
    assert rel_diff(graph(ms.Tensor(x)).asnumpy(), expected) <= TOLERANCE["MINDIR"]

    loaded = load_model(ckpt_path=out)  # the file alone: model, labels, preprocessing
    assert (loaded.model, loaded.labels, loaded.fixed_batch) == ("res2net50_26w_4s", CLASSES, 4)
    assert loaded.preprocess == load_model(ckpt_path=path).preprocess
    images = sorted(glob.glob(os.path.join(digits_dir, "val", "*", "*.png")))[:5]
    from_mindir = predict(images, ckpt_path=str(out), topk=3)
    from_ckpt = predict(images, ckpt_path=path, topk=3)
    for a, b in zip(from_mindir, from_ckpt):
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        np.testing.assert_allclose([t["probability"] for t in a["top"]],
                                   [t["probability"] for t in b["top"]], atol=1e-5)
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.mark.slow
def test_onnx_of_the_checkpoint_runs_in_onnxruntime(checkpoint, tmp_path, capsys):
    path, net = checkpoint
    out = tmp_path / "digits.onnx"
    code, stdout, err = _export_cli(capsys, "--ckpt_path", path, "--format", "onnx",
                                    "--image-size", 65, "--out", out)
    assert code == 0, err
    assert "checked with onnxruntime" in stdout and "centre crop 65" in stdout
    assert "input (N, 3, 65, 65)" in stdout
    x = random_images(3, 65, seed=4)  # exported with a batch of 1: the batch axis is dynamic
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 65, 65]
    ms.set_context(mode=ms.PYNATIVE_MODE)
    expected = net(ms.Tensor(x)).asnumpy()
    actual = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert rel_diff(actual, expected) <= TOLERANCE["ONNX"]


def test_export_bad_input_one_line_and_status_2(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    mindir = tmp_path / "x.mindir"
    mindir.write_bytes(b"not a model")
    cases = [
        (["--ckpt_path", path, "--batch", 0], "batch must be at least 1"),
        (["--ckpt_path", path, "--image-size", 16], "image size 16 is too small"),
        (["--ckpt_path", tmp_path / "missing.ckpt"], "missing.ckpt does not exist"),
        (["--ckpt_path", mindir], "is an exported file already"),
        (["--model", "res2net50"], "no weights: pass --ckpt_path"),
        (["--ckpt_path", path, "--model", "res2next_dla60"], "was trained as res2net50_26w_4s"),
    ]
    for argv, expected in cases:
        code, out, err = _export_cli(capsys, *argv, "--out", tmp_path / "out.onnx")
        assert code == 2 and out == "", argv
        assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--ckpt_path", path, "--format", "AIR"])
    assert exit_info.value.code == 2
    assert os.listdir(tmp_path) == ["x.mindir"]  # nothing half-written


def test_a_file_that_fails_its_check_is_not_left_behind(checkpoint, tmp_path, capsys,
                                                         monkeypatch):
    """The file is checked under its temporary name: when the check fails, the error is one
    line, the previous file at ``--out`` is unchanged and no temporary file is left."""
    path, _ = checkpoint
    (tmp_path / "digits.mindir").write_bytes(b"the previous export")
    monkeypatch.setitem(TOLERANCE, "MINDIR", -1.0)  # no file can pass: the check fails
    # the round trip's batch: its graphs come from the compile cache
    code, stdout, err = _export_cli(capsys, "--ckpt_path", path, "--batch", 4, "--out",
                                    tmp_path / "digits.mindir")
    assert code == 1 and stdout == ""
    assert err.startswith("error: the MINDIR file computes other logits than the network")
    assert err.count("\n") == 1 and f"nothing written to {tmp_path / 'digits.mindir'}" in err
    assert os.listdir(tmp_path) == ["digits.mindir"]
    assert (tmp_path / "digits.mindir").read_bytes() == b"the previous export"


def _zoo_loaded(name):
    net = randomise_bn(res2net_ms.create_model(name, num_classes=10))
    return LoadedModel(net, name, 10, Preprocess.of_model(get_model_config(name), 64),
                       [str(i) for i in range(10)], "random weights")


# timm's .pth of these exported to ONNX and run by onnxruntime (ours, timm's name, size):
# the two kinds of block of timm's models, at full size, exported once in this file.
FROM_TIMM = [("res2net50_26w_4s", "res2net50_26w_4s", 64),
             ("res2net50_v1b_26w_4s", "res2net50d", 65)]


def _assert_holds_the_weights(path, name):
    assert os.path.getsize(path) > 4 * get_model_config(name).params * 0.9


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ONE_PER_BLOCK_KIND
                                  if n not in {ours for ours, _, _ in FROM_TIMM}])
def test_every_zoo_model_exports_to_onnx(graph_mode, name, tmp_path):
    """Graph-mode export of each kind of zoo network at 64 px; onnxruntime gives its logits.
    (The kinds of timm's models: exported from timm's files below.)"""
    result = export(_zoo_loaded(name), str(tmp_path / f"{name}.onnx"), "ONNX", batch=2)
    assert result["max_rel_diff"] is not None and result["max_rel_diff"] <= TOLERANCE["ONNX"]
    _assert_holds_the_weights(result["path"], name)


@pytest.mark.slow
def test_zoo_mindir_stores_what_predict_needs(graph_mode, tmp_path):
    from mindspore.train import mind_ir_pb2

    path = export(_zoo_loaded("res2net_dla60"), str(tmp_path / "dla.mindir"), "MINDIR")["path"]
    proto = mind_ir_pb2.ModelProto()
    proto.ParseFromString(open(path, "rb").read())
    info = json.loads(next(e.value for e in proto.user_info if e.key == MINDIR_KEY))
    assert info["model"] == "res2net_dla60" and info["num_classes"] == 10
    assert info["preprocess"]["image_size"] == 64 and info["labels"] is None


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("ours, timm_name, size", FROM_TIMM)
def test_timm_pth_to_onnx_matches_timm(graph_mode, tmp_path, capsys, ours, timm_name, size):
    """End to end: a timm model's .pth -> convert CLI -> export CLI (which checks the file
    against the network) -> onnxruntime."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from res2net_ms.convert.__main__ import main as convert_main

    model = randomised_torch(timm.create_model(timm_name, num_classes=10))
    torch.save(model.state_dict(), tmp_path / "timm.pth")
    assert convert_main([str(tmp_path / "timm.pth"), "--model", ours, "--out",
                         str(tmp_path / "converted.ckpt")]) == 0
    code, _, err = _export_cli(capsys, "--model", ours, "--ckpt_path",
                               tmp_path / "converted.ckpt", "--format", "ONNX", "--batch", 2,
                               "--image-size", size, "--out", tmp_path / "model.onnx")
    assert code == 0, err
    x = random_images(2, size, seed=5)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    actual = run_exported(str(tmp_path / "model.onnx"), "ONNX", x)
    assert rel_diff(actual, expected) <= TOLERANCE["ONNX"]
    _assert_holds_the_weights(tmp_path / "model.onnx", ours)
