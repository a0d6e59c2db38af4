"""``python -m res2net_ms.detect``: boxes as JSON, the drawn image, a folder of images, and one
clear ``error:`` line with exit status 2 for bad input. No torch needed: the checkpoint is a
random full-size detector of ours whose classifier favours "person"."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, ckpt_arrays
from test_layout import _imports_by_part
from res2net_ms.ckpt import save_ckpt
from res2net_ms.det import coco_classes, create_detector
from res2net_ms.detect import main

SCALE = ["--scale", "320", "192"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from sklearn.datasets import load_sample_image

    root = tmp_path_factory.mktemp("detect")
    detector = create_detector("faster_rcnn_r2_101_fpn")
    weights = {p.name: p.asnumpy() for p in detector.get_parameters()}
    for name in ("rpn_head.rpn_reg", "roi_head.bbox_head.fc_reg", "roi_head.bbox_head.fc_cls"):
        weights[name + ".weight"][:] = 0  # anchors are the boxes: random depth-101 deltas
        weights[name + ".bias"][:] = 0    # would push every box out of the image
    weights["roi_head.bbox_head.fc_cls.bias"][0] = 8.0  # every RoI: "person", score 0.97
    save_ckpt(weights, root / "detector.ckpt")
    save_ckpt({"neck.lateral_convs.0.bias": np.zeros(256, np.float32)}, root / "partial.ckpt")
    folder = root / "images"
    folder.mkdir()
    china = load_sample_image("china.jpg")[::3, ::3]
    flower = load_sample_image("flower.jpg")[::3, ::3]
    Image.fromarray(china).save(folder / "china.jpg", quality=95)
    Image.fromarray(flower).save(folder / "flower.png")
    (folder / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "empty").mkdir()
    return root


@pytest.mark.slow  # compiles the full-depth detector in a subprocess (about 40 s)
def test_detects_draws_and_writes_json(files, tmp_path):
    image = files / "images" / "china.jpg"
    out, show = tmp_path / "boxes.json", tmp_path / "china_boxes.png"
    run = subprocess.run(
        [sys.executable, "-m", "res2net_ms.detect", str(image), "--ckpt_path",
         str(files / "detector.ckpt"), "--out", str(out), "--show", str(show),
         "--score-thr", "0.5", *SCALE], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "Exception ignored" not in run.stderr
    record = json.loads(out.read_text())["images"][0]
    original = np.asarray(Image.open(image).convert("RGB"))
    assert (record["width"], record["height"]) == (original.shape[1], original.shape[0])
    dets = record["detections"]
    assert dets and all(d["name"] == "person" and d["label"] == 0 for d in dets)
    scores = [d["score"] for d in dets]
    assert scores == sorted(scores, reverse=True) and min(scores) > 0.5
    for d in dets:
        x1, y1, x2, y2 = d["box"]
        assert -0.01 <= x1 < x2 <= original.shape[1] + 0.01
        assert -0.01 <= y1 < y2 <= original.shape[0] + 0.01
    drawn = np.asarray(Image.open(show).convert("RGB"))
    assert drawn.shape == original.shape
    x1, y1, x2, y2 = (int(round(v)) for v in dets[0]["box"])
    edge = drawn[min(y2, drawn.shape[0] - 1), x1:x2]  # the bottom edge of the best box
    assert (np.abs(edge.astype(int) - original[min(y2, drawn.shape[0] - 1), x1:x2]).max(
        axis=1) > 0).mean() > 0.9
    assert f"{len(dets)} boxes" in run.stdout


@pytest.mark.slow  # compiles the full-depth detector (about 30 s)
def test_folder_of_images(files, tmp_path):
    out, show = tmp_path / "boxes.json", tmp_path / "drawn"
    assert main([str(files / "images"), "--ckpt_path", str(files / "detector.ckpt"),
                 "--out", str(out), "--show", str(show), "--score-thr", "0.3", *SCALE]) == 0
    records = json.loads(out.read_text())["images"]
    assert [r["file"] for r in records] == ["china.jpg", "flower.png"]  # notes.txt skipped
    assert sorted(os.listdir(show)) == ["china.png", "flower.png"]
    assert all(d["name"] in coco_classes() for r in records for d in r["detections"])


@pytest.mark.parametrize("case, expected", [
    ("missing image", "does not exist"),
    ("folder without images", "no images"),
    ("corrupt image", "not a readable image"),
    ("missing checkpoint", "checkpoint not found"),
    ("checkpoint of another network", "does not fit faster_rcnn_r2_101_fpn"),
    ("not a checkpoint", "broken.jpg"),
    ("score threshold above 1", "--score-thr must be within 0..1"),
    ("nothing to write", "nothing to write"),
])
def test_bad_input_gives_one_error_line_and_status_2(files, tmp_path, capsys, case, expected):
    image, ckpt = str(files / "images" / "china.jpg"), str(files / "detector.ckpt")
    out = ["--out", str(tmp_path / "boxes.json")]
    argv = {
        "missing image": [str(files / "nope.jpg"), "--ckpt_path", ckpt, *out],
        "folder without images": [str(files / "empty"), "--ckpt_path", ckpt, *out],
        "corrupt image": [str(files / "broken.jpg"), "--ckpt_path", ckpt, *out],
        "missing checkpoint": [image, "--ckpt_path", str(files / "nope.ckpt"), *out],
        "checkpoint of another network": [image, "--ckpt_path", str(files / "partial.ckpt"),
                                          *out],
        "not a checkpoint": [image, "--ckpt_path", str(files / "broken.jpg"), *out],
        "score threshold above 1": [image, "--ckpt_path", ckpt, "--score-thr", "1.5", *out],
        "nothing to write": [image, "--ckpt_path", ckpt],
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not (tmp_path / "boxes.json").exists()


def test_det_sits_above_models_converter_and_factory():
    graph = _imports_by_part()
    assert graph["det"] <= {"models", "convert", "factory", "fileio", "ckpt", "process"}
    # the converter gets the detector's parameter shapes passed in, and imports no det/
    assert {part for part, uses in graph.items() if "det" in uses} <= {"detect", "__init__"}


def test_convert_command_writes_a_loadable_detector(files, tmp_path, capsys):
    from res2net_ms.det.__main__ import main as det_main

    out = tmp_path / "converted.ckpt"
    assert det_main(["convert", str(files / "detector.ckpt"), "--out", str(out)]) == 0
    assert "missing:    0" in capsys.readouterr().out
    converted = create_detector("faster_rcnn_r2_101_fpn", checkpoint_path=out)
    original = ckpt_arrays(files / "detector.ckpt")
    for p in converted.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), original[p.name], err_msg=p.name)
    assert det_main(["convert", str(files / "partial.ckpt"), "--out", str(tmp_path / "x.ckpt")]) \
        == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0] and not (tmp_path / "x.ckpt").exists()
