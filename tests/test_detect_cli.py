"""``python -m res2net_ms.detect``: COCO result JSON, drawn boxes and masks, a folder in
batches, and one clear ``error:`` line with exit status 2 for bad input. No torch needed: the
detector is the small Mask R-CNN of ``conftest.small_detector`` (one block per stage), whose
heads find "person" and "car" with masks filling their boxes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, SMALL_DETECTOR_SCALE
from test_layout import _imports_by_part
from res2net_ms.ckpt import save_ckpt
from res2net_ms.det import create_detector
from res2net_ms.detect import image_ids, main

SCALE = ["--scale", *map(str, SMALL_DETECTOR_SCALE)]
DETECTOR = ["--detector", "mask_rcnn_r2_101_fpn"]
mask_api = pytest.importorskip("pycocotools.mask")


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_detector):
    from sklearn.datasets import load_sample_image

    root = tmp_path_factory.mktemp("detect")
    save_ckpt({p.name: p.asnumpy() for p in small_detector.get_parameters()},
              root / "detector.ckpt")
    save_ckpt({"neck.lateral_convs.0.bias": np.zeros(256, np.float32)}, root / "partial.ckpt")
    folder = root / "images"
    folder.mkdir()
    china = load_sample_image("china.jpg")[::3, ::3]
    flower = load_sample_image("flower.jpg")[::3, ::3]  # the same size: one batch of two
    Image.fromarray(china).save(folder / "china.jpg", quality=95)
    Image.fromarray(flower).save(folder / "flower.png")
    (folder / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "empty").mkdir()
    return root


@pytest.fixture
def built(small_detector, monkeypatch):
    """The command's ``create_detector`` gives the compiled ``small_detector`` (a second build
    would compile again); what the command asked for is recorded."""
    from res2net_ms.det import cli

    calls = []

    def create(name, checkpoint_path, pretrained, scale):
        calls.append((name, checkpoint_path, pretrained, tuple(scale)))
        return small_detector

    monkeypatch.setattr(cli, "create_detector", create)
    return calls


def check_records(records, image, image_id):
    """COCO result records of one image: boxes inside it, person/car only, masks that decode
    to its size and lie in their boxes; by decreasing score."""
    mine = [r for r in records if r["image_id"] == image_id]
    assert mine and {r["category_id"] for r in mine} <= {1, 3}  # COCO's person, car
    scores = [r["score"] for r in mine]
    assert scores == sorted(scores, reverse=True) and min(scores) > 0.3
    height, width = image.shape[:2]
    for r in mine:
        x, y, w, h = r["bbox"]
        assert -0.01 <= x and -0.01 <= y and w > 0 and h > 0
        assert x + w <= width + 0.01 and y + h <= height + 0.01
        mask = mask_api.decode(r["segmentation"]).astype(bool)
        assert mask.shape == (height, width) and mask.sum() > 0
        inside = mask[int(y):int(np.ceil(y + h)) + 1, int(x):int(np.ceil(x + w)) + 1].sum()
        assert inside == mask.sum()
    return mine


@pytest.mark.slow
def test_detects_draws_and_writes_coco_json(files, tmp_path):
    """The real command in its own process: the checkpoint is read through the converter (a
    one-block-per-stage backbone, as the file holds) and the process exits cleanly."""
    image = files / "images" / "china.jpg"
    out, show = tmp_path / "results.json", tmp_path / "china_drawn.png"
    code = ("import sys\n"
            "from res2net_ms.det import cli, factory\n"
            "cli.create_detector = lambda *a, **k: factory.create_detector(\n"
            "    *a, backbone_kwargs=dict(layers=(1, 1, 1, 1)), **k)\n"
            "from res2net_ms.detect import main\n"
            "from res2net_ms.process import exit_process\n"
            "exit_process(main(sys.argv[1:]))\n")
    run = subprocess.run(
        [sys.executable, "-c", code, str(image), *DETECTOR, "--ckpt_path",
         str(files / "detector.ckpt"), "--out", str(out), "--show", str(show),
         "--score-thr", "0.3", *SCALE], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "Exception ignored" not in run.stderr
    original = np.asarray(Image.open(image).convert("RGB"))
    records = check_records(json.loads(out.read_text()), original, 1)
    assert f"{len(records)} detections" in run.stdout
    drawn = np.asarray(Image.open(show).convert("RGB"))
    assert drawn.shape == original.shape
    best = mask_api.decode(records[0]["segmentation"]).astype(bool)
    changed = np.abs(drawn.astype(int) - original).max(axis=2) > 0
    assert changed[best].mean() > 0.9  # the best instance's mask is painted
    x, y, w, h = records[0]["bbox"]
    row = min(int(round(y + h)), drawn.shape[0] - 1)  # the bottom edge of its box
    assert changed[row, int(round(x)):int(round(x + w))].mean() > 0.9


@pytest.mark.slow
def test_folder_in_batches(files, built, tmp_path, capsys):
    out, show = tmp_path / "results.json", tmp_path / "drawn"
    ckpt = str(files / "detector.ckpt")
    assert main([str(files / "images"), *DETECTOR, "--ckpt_path", ckpt, "--batch-size", "2",
                 "--out", str(out), "--show", str(show), *SCALE]) == 0
    assert built == [("mask_rcnn_r2_101_fpn", ckpt, False, SMALL_DETECTOR_SCALE)]
    records = json.loads(out.read_text())
    for image_id, name in ((1, "china.jpg"), (2, "flower.png")):  # notes.txt skipped
        check_records(records, np.asarray(Image.open(files / "images" / name)), image_id)
    assert sorted(os.listdir(show)) == ["china.png", "flower.png"]
    printed = capsys.readouterr().out
    assert "china.jpg: " in printed and "flower.png: " in printed


@pytest.mark.slow
def test_predict_takes_arrays_pil_images_and_paths(files, small_detector):
    """The same detections whatever the image is given as; a single image gives one result,
    a list a list."""
    path = files / "images" / "china.jpg"
    array = np.asarray(Image.open(path).convert("RGB"))
    single = small_detector.predict(array)
    found = small_detector.predict([Image.open(path), str(path), path])
    assert len(single.boxes) > 0 and len(found) == 3
    for result in found:
        np.testing.assert_array_equal(result.boxes, single.boxes)
        np.testing.assert_array_equal(result.labels, single.labels)
        np.testing.assert_array_equal(result.masks, single.masks)


def test_batches_hold_one_padded_size_and_pad_with_blank_images():
    """Images are grouped by the size they are padded to (mmdetection's multiple of 32), so
    that each is padded as it would be alone: a batch of a size compiles once, whatever the
    images' own sizes; the last batch of a size is filled up with blank images."""
    from res2net_ms.det.preprocess import DetDataPreprocessor

    pre = DetDataPreprocessor(scale=(1333, 800))
    sizes = [(480, 640), (600, 800), (640, 480), (481, 641), (375, 500), (1000, 2000)]
    # 480x640, 600x800, 481x641 and 375x500 all resize to 800x1067 -> padded 800x1088
    assert pre.padded_shape(480, 640) == (800, 1088) == pre.padded_shape(375, 500)
    assert pre.plan(sizes, batch_size=3) == [[0, 1, 3], [4], [2], [5]]
    images = [np.full(size + (3,), 100, np.uint8) for size in ((480, 640), (375, 500))]
    batch, metas = pre.collate(images, batch_size=3)
    assert batch.shape == (3, 3, 800, 1088)
    assert [m.img_shape for m in metas] == [(800, 1067), (800, 1067)]
    assert np.all(batch[2] == 0) and np.all(batch[1, :, :, 1067:] == 0)
    alone, _ = pre.collate(images[1:])
    np.testing.assert_array_equal(batch[1], alone[0])


def test_image_ids_follow_coco_file_names():
    assert image_ids(["a/000000397133.jpg", "a/000000000139.jpg"]) == [397133, 139]
    assert image_ids(["a/1.jpg", "b/01.jpg"]) == [1, 2]  # the same number twice
    assert image_ids(["a/street.jpg", "a/42.jpg"]) == [1, 2]


@pytest.mark.parametrize("case, expected", [
    ("missing image", "does not exist"),
    ("folder without images", "no images"),
    ("corrupt image", "not a readable image"),
    ("missing checkpoint", "checkpoint not found"),
    ("checkpoint of another network", "does not fit mask_rcnn_r2_101_fpn"),
    ("not a checkpoint", "broken.jpg"),
    ("score threshold above 1", "--score-thr must be within 0..1"),
    ("batch size 0", "--batch-size must be at least 1"),
    ("nothing to write", "nothing to write"),
])
def test_bad_input_gives_one_error_line_and_status_2(files, tmp_path, capsys, case, expected):
    image, ckpt = str(files / "images" / "china.jpg"), str(files / "detector.ckpt")
    out = ["--out", str(tmp_path / "results.json"), *DETECTOR]
    argv = {
        "missing image": [str(files / "nope.jpg"), "--ckpt_path", ckpt, *out],
        "folder without images": [str(files / "empty"), "--ckpt_path", ckpt, *out],
        "corrupt image": [str(files / "broken.jpg"), "--ckpt_path", ckpt, *out],
        "missing checkpoint": [image, "--ckpt_path", str(files / "nope.ckpt"), *out],
        "checkpoint of another network": [image, "--ckpt_path", str(files / "partial.ckpt"),
                                          *out],
        "not a checkpoint": [image, "--ckpt_path", str(files / "broken.jpg"), *out],
        "score threshold above 1": [image, "--ckpt_path", ckpt, "--score-thr", "1.5", *out],
        "batch size 0": [image, "--ckpt_path", ckpt, "--batch-size", "0", *out],
        "nothing to write": [image, "--ckpt_path", ckpt, *DETECTOR],
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not (tmp_path / "results.json").exists()


def test_det_sits_above_models_data_converter_and_factory():
    graph = _imports_by_part()
    assert graph["det"] <= {"models", "convert", "factory", "hub", "data", "fileio", "ckpt",
                            "process", "lazy", "inference", "weights", "loss_scale"}
    # the converter gets the detector's parameter shapes passed in, and imports no det/; only
    # the layers on top use it: the detect CLI, the zoo table and the engine's detector runs
    assert {part for part, uses in graph.items() if "det" in uses} <= {"detect", "zoo_table",
                                                                       "engine"}


@pytest.mark.slow
def test_convert_command_writes_a_loadable_detector(files, tmp_path, capsys):
    """A whole full-depth detector file through ``python -m res2net_ms.det convert`` (no
    compilation: the weights are only built, written, read and compared)."""
    from res2net_ms.det.__main__ import main as det_main

    source, out = tmp_path / "faster.ckpt", tmp_path / "converted.ckpt"
    original = {p.name: p.asnumpy() for p in
                create_detector("faster_rcnn_r2_101_fpn").get_parameters()}
    save_ckpt(original, source)
    assert det_main(["convert", str(source), "--out", str(out), "--model",
                     "faster_rcnn_r2_101_fpn"]) == 0
    assert "missing:    0" in capsys.readouterr().out
    converted = create_detector("faster_rcnn_r2_101_fpn", checkpoint_path=out)
    for p in converted.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), original[p.name], err_msg=p.name)
    assert det_main(["convert", str(files / "partial.ckpt"), "--out", str(tmp_path / "x.ckpt")]) \
        == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0] and not (tmp_path / "x.ckpt").exists()
