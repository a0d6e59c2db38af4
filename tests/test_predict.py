"""predict: validation's preprocessing, top-k of the network's own logits, the class names a
checkpoint carries, three output formats, and one-line errors for bad input."""
import csv
import glob
import io
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

import res2net_ms
from conftest import REPO
from inference_helpers import CLASSES, light_checkpoint, light_network
from res2net_ms.convert import save_ckpt
from res2net_ms.data import build_transforms
from res2net_ms.inference import Preprocess, find_images, imagenet_classes, load_model
from res2net_ms.models import get_model_config
from res2net_ms.predict import main as predict_main


@pytest.fixture(scope="module")
def checkpoint(digits_dir, tmp_path_factory):
    return light_checkpoint(digits_dir, tmp_path_factory.mktemp("ckpt") / "light.ckpt")


@pytest.fixture
def images(digits_dir):
    """Three validation digits: a 3, a 7 and a 9."""
    return [sorted(glob.glob(os.path.join(digits_dir, "val", c, "*.png")))[0] for c in "379"]


def _run(capsys, *argv):
    code = predict_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _decoded_by_validation(path, preprocess):
    """What validate.py's pipeline (MindSpore's decoder and transforms) makes of a file."""
    args = type("Args", (), dict(image_resize=preprocess.image_size, crop_pct=preprocess.crop_pct,
                                 interpolation=preprocess.interpolation,
                                 mean=list(preprocess.mean), std=list(preprocess.std)))
    data = np.fromfile(path, np.uint8)
    for transform in build_transforms(args, is_training=False):
        data = transform(data)
    return data


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_preprocessing_is_validations(tmp_path, fmt):
    """Resize by crop_pct, centre crop, mean/std: the same numbers as the validation pipeline,
    on a non-square image with the ImageNet settings of the zoo."""
    pixels = (np.random.RandomState(0).rand(150, 201, 3) * 255).astype(np.uint8)
    path = str(tmp_path / f"image.{fmt.lower()}")
    Image.fromarray(pixels).save(path, format=fmt)
    preprocess = Preprocess.of_model(get_model_config("res2net50d"), image_size=96)
    assert (preprocess.crop_pct, preprocess.mean[0]) == (0.875, round(0.485 * 255, 4))
    ours = preprocess(Image.open(path).convert("RGB"))
    assert ours.shape == (3, 96, 96)
    np.testing.assert_array_equal(ours, _decoded_by_validation(path, preprocess))


@pytest.mark.slow
def test_top_k_of_the_networks_logits_with_the_checkpoints_labels(checkpoint, images, capsys,
                                                                  pynative_mode):
    path, net = checkpoint
    code, out, err = _run(capsys, *images, "--ckpt_path", path, "--topk", 3, "--format",
                          "json", "--mode", 1)
    assert code == 0, err
    results = json.loads(out)
    loaded = load_model(ckpt_path=path)
    assert loaded.preprocess.image_size == 32 and loaded.preprocess.mean == (127.5,) * 3
    inputs = np.stack([loaded.preprocess(Image.open(p).convert("RGB")) for p in images])
    logits = net(ms.Tensor(inputs)).asnumpy().astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert [r["image"] for r in results] == images
    for r, p in zip(results, probs):
        order = np.argsort(-p)[:3]
        assert [t["class"] for t in r["top"]] == list(order)
        assert [t["label"] for t in r["top"]] == [CLASSES[k] for k in order]
        np.testing.assert_allclose([t["probability"] for t in r["top"]], p[order], rtol=1e-5)

    # the Python API returns the same; a folder is searched recursively
    api = res2net_ms.predict(images, ckpt_path=path, topk=3)
    assert [[t["class"] for t in r["top"]] for r in api] == \
        [[t["class"] for t in r["top"]] for r in results]
    folder = os.path.dirname(os.path.dirname(images[0]))
    assert len(res2net_ms.predict(folder, model=loaded, topk=1, batch_size=64)) == 360


@pytest.mark.slow
def test_graph_mode_batches_table_and_csv(checkpoint, images, capsys):
    path, _ = checkpoint
    code, table, err = _run(capsys, *images, "--ckpt_path", path, "--batch-size", 2)
    assert code == 0, err
    lines = table.splitlines()
    assert lines[0] == images[0] and len(lines) == 3 * 6
    assert lines[1].startswith("  1. ") and lines[1].rstrip().endswith(")")
    # the batches of the table's run: its compiled graph serves (from the compile cache)
    code, text, _ = _run(capsys, *images, "--ckpt_path", path, "--format", "csv", "--topk", 2,
                         "--batch-size", 2)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 6 and rows[0]["image"] == images[0] and rows[0]["rank"] == "1"
    top1_table = [lines[1 + 6 * i].split()[1] for i in range(3)]
    assert [r["label"] for r in rows if r["rank"] == "1"] == top1_table


def test_labels_file_replaces_the_names(checkpoint, images, tmp_path, capsys):
    path, _ = checkpoint
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    code, out, _ = _run(capsys, images[0], "--ckpt_path", path, "--labels", labels,
                        "--format", "json")
    top = json.loads(out)[0]["top"][0]
    assert code == 0 and top["label"] == f"digit {top['class']}"
    labels.write_text("a\nb\n")
    code, _, err = _run(capsys, images[0], "--ckpt_path", path, "--labels", labels)
    assert code == 2 and err.count("\n") == 1
    assert "has 2 names, the model has 10 classes" in err


def test_imagenet_class_names_ship_with_the_package():
    names = imagenet_classes()
    assert len(names) == len(set(names)) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet tissue"


@pytest.mark.slow
def test_converted_checkpoint_and_checkpoint_of_another_model(tmp_path, images, capsys):
    net = res2net_ms.create_model("res2net50_48w_2s", num_classes=1000)
    converted = save_ckpt({p.name: p.asnumpy() for p in net.get_parameters()},
                          tmp_path / "r2n50_48w.ckpt")
    loaded = load_model("res2net50_48w_2s", converted)
    assert loaded.num_classes == 1000 and loaded.labels[0] == "tench"
    assert loaded.preprocess.image_size == 224
    code, _, err = _run(capsys, images[0], "--model", "res2next50", "--ckpt_path", converted)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "does not fit res2next50" in err and "fits res2net50_48w_2s" in err
    code, _, err = _run(capsys, images[0], "--ckpt_path", converted)
    assert code == 2 and "--model is required" in err


def test_bad_input_one_line_and_status_2(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    cases = [
        ([text_file, "--ckpt_path", path], f"{text_file}: not a readable image"),
        ([empty, "--ckpt_path", path], f"folder {empty} holds no images"),
        ([tmp_path / "missing.png", "--ckpt_path", path], "missing.png does not exist"),
        ([text_file, "--ckpt_path", tmp_path / "none.ckpt"], "none.ckpt does not exist"),
        ([text_file], "no weights: pass --ckpt_path"),
        ([text_file, "--ckpt_path", text_file, "--model", "res2net50"], "notes.png"),
        ([text_file, "--ckpt_path", path, "--topk", 0], "topk must be at least 1"),
        ([text_file, "--ckpt_path", path, "--model", "res2next50"],
         "was trained as res2net50_26w_4s, not res2next50"),
        ([text_file, "--pretrained", "True", "--model", "res2net152_26w_4s"],
         "has no downloadable weights"),
    ]
    for argv, expected in cases:
        code, out, err = _run(capsys, *argv)
        assert code == 2 and out == "", argv
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert expected in err, (expected, err)


def test_find_images_takes_files_in_order(tmp_path):
    for name in ("b.png", "a.JPG", "c.txt", "sub/d.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [os.path.relpath(p, tmp_path) for p in find_images(tmp_path)] == \
        ["a.JPG", "b.png", os.path.join("sub", "d.png")]


def test_command_line_runs_as_a_module(checkpoint, images):
    """``python -m res2net_ms.predict`` in a fresh process: output, exit code, no warning."""
    run = subprocess.run([sys.executable, "-m", "res2net_ms.predict", images[0], "--ckpt_path",
                          checkpoint[0], "--topk", "2", "--format", "json"],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)[0]["top"]) == 2
    assert "RuntimeWarning" not in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_training_checkpoints_predict_with_their_ema_weights(digits_dir, tmp_path, images,
                                                             checkpoint, pynative_mode):
    """A run with EMA validated (and chose best.ckpt) with the EMA weights: predict uses them
    unless told otherwise."""
    path, plain = light_checkpoint(digits_dir, tmp_path / "ema.ckpt", seed=0, ema_seed=1)
    ema_net = light_network(seed=1)
    inputs = ms.Tensor(np.stack([load_model(ckpt_path=path).preprocess(
        Image.open(p).convert("RGB")) for p in images]))
    for ema, expected in ((None, ema_net), (True, ema_net), (False, plain)):
        net = load_model(ckpt_path=path, ema=ema).network
        np.testing.assert_allclose(net(inputs).asnumpy(), expected(inputs).asnumpy(),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no EMA weights"):
        load_model(ckpt_path=checkpoint[0], ema=True)  # a checkpoint without EMA
