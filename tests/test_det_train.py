"""Detector training on a COCO-format set: the training set's targets, mmdetection's flip and
schedule, and ``make demo-det``'s run end to end (tiny: the real run is in the README)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from res2net_ms.data import DIGIT_NAMES, write_digits_detection_set
from res2net_ms.det.train_data import CocoTrainSet, hflip
from res2net_ms.det.trainer import lr_schedule

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def digits_det(tmp_path_factory):
    """A small digits detection set, with one crowd region and one image left empty."""
    root = write_digits_detection_set(str(tmp_path_factory.mktemp("det") / "digits_det"),
                                      train_images=6, val_images=4)
    ann = os.path.join(root, "annotations", "instances_train.json")
    with open(ann) as f:
        data = json.load(f)
    data["annotations"][0]["iscrowd"] = 1
    last = data["images"][-1]["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != last]
    with open(ann, "w") as f:
        json.dump(data, f)
    return root, data


def test_targets_are_the_annotations_without_crowds_and_empty_images(digits_det):
    root, data = digits_det
    train = CocoTrainSet(os.path.join(root, "annotations", "instances_train.json"),
                         os.path.join(root, "train"), DIGIT_NAMES, with_mask=True)
    assert len(train) == len(data["images"]) - 1  # the image without a box is left out
    crowd = data["annotations"][0]
    image, target = train[0]
    assert image.shape == (data["images"][0]["height"], data["images"][0]["width"], 3)
    expected = [a for a in data["annotations"] if a["image_id"] == data["images"][0]["id"]
                and not a["iscrowd"]]
    assert crowd["image_id"] == data["images"][0]["id"] and len(target["boxes"]) == len(expected)
    for box, label, mask, ann in zip(target["boxes"], target["labels"], target["masks"], expected):
        x, y, w, h = ann["bbox"]
        np.testing.assert_array_equal(box, np.float32([x, y, x + w, y + h]))
        assert DIGIT_NAMES[label] == str(ann["category_id"] - 1)
        ys, xs = np.nonzero(mask)  # the mask lies tight in its box
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)


def test_flip_mirrors_boxes_and_masks_together(digits_det):
    root, _ = digits_det
    train = CocoTrainSet(os.path.join(root, "annotations", "instances_train.json"),
                         os.path.join(root, "train"), DIGIT_NAMES, with_mask=True)
    image, target = train[1]
    flipped, mirrored = hflip(image, target)
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    for box, mask in zip(mirrored["boxes"], mirrored["masks"]):
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(box)
    again = hflip(flipped, mirrored)
    np.testing.assert_array_equal(again[1]["boxes"], target["boxes"])
    batches = list(train.batches(2, epoch=0, seed=0))
    assert len(batches) == len(train) // 2 and all(len(images) == 2 for images, _, _ in batches)
    assert [t["boxes"].tolist() for _, ts, _ in batches for t in ts] != \
        [t["boxes"].tolist() for _, ts, _ in train.batches(2, epoch=1, seed=0) for t in ts]


def test_ranks_share_out_the_global_batch_and_resume_mid_epoch(digits_det):
    """Two ranks of batch 1 see the images, flips and sampler seeds of one rank of batch 2,
    and a start from step 1 continues where step 0 ended."""
    root, _ = digits_det
    train = CocoTrainSet(os.path.join(root, "annotations", "instances_train.json"),
                         os.path.join(root, "train"), DIGIT_NAMES)

    def flat(batches):
        return [(t["boxes"].tolist(), seed) for _, targets, seeds in batches
                for t, seed in zip(targets, seeds)]

    whole = flat(train.batches(2, epoch=3, seed=5))
    ranks = [flat(train.batches(1, epoch=3, seed=5, rank=r, group_size=2)) for r in (0, 1)]
    assert [pair for step in zip(*ranks) for pair in step] == whole
    assert flat(train.batches(2, epoch=3, seed=5, start_step=1)) == whole[2:]
    assert len({seed for _, seed in whole}) == len(whole)


def test_bad_image_and_foreign_classes_are_one_line(digits_det, tmp_path):
    root, _ = digits_det
    with pytest.raises(ValueError, match="categories of the annotations: 'cat'"):
        CocoTrainSet(os.path.join(root, "annotations", "instances_train.json"),
                     os.path.join(root, "train"), ("cat",))
    folder = tmp_path / "train"
    folder.mkdir()
    for name in os.listdir(os.path.join(root, "train")):
        Image.open(os.path.join(root, "train", name)).save(folder / name)
    bad = sorted(os.listdir(folder))[2]
    (folder / bad).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(Exception, match=f"{bad}: not a readable image") as error:
        CocoTrainSet(os.path.join(root, "annotations", "instances_train.json"), str(folder), DIGIT_NAMES)
    assert "\n" not in str(error.value)


@pytest.mark.mmdet
def test_schedule_is_mmdetections():
    """Linear warm-up by iteration times steps by epoch, as mmengine's ``LinearLR`` and
    ``MultiStepLR`` (by_epoch, converted to iterations as its runner converts them)."""
    import torch
    from mmengine.optim.scheduler import LinearLR, MultiStepLR

    epochs, steps = 12, 70
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.02)
    schedulers = [LinearLR(optimizer, start_factor=0.001, by_epoch=False, begin=0, end=500),
                  MultiStepLR.build_iter_from_epoch(optimizer, milestones=[8, 11],
                                                    epoch_length=steps, begin=0, end=epochs)]
    theirs = []
    for _ in range(epochs * steps):
        theirs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
    ours = lr_schedule(epochs, steps, 0.02, milestones=(8, 11), warmup_iters=500)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


@pytest.mark.slow
def test_demo_det_runs_end_to_end(trained, tmp_path):
    """``python -m res2net_ms.det.demo`` on a few canvases for one epoch from the shared
    classification run: it trains, writes its weights, evaluates with COCOeval and draws two
    held-out images (enlarged 3 times); the AP of so short a run is not the point."""
    _, run_dir = trained
    run = subprocess.run(
        [sys.executable, "-m", "res2net_ms.det.demo", "--backbone_ckpt",
         os.path.join(run_dir, "best.ckpt"), "--data_dir", str(tmp_path / "data"), "--out_dir",
         str(tmp_path / "out"), "--train_images", "4", "--val_images", "2", "--epochs", "1", "--batch_size", "2",
         "--milestones", "--warmup_iters", "1", "--target", "0"],
        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert lines[-1].startswith("box AP50: ") and 0 <= float(lines[-1].split()[-1]) <= 1
    assert "Average Precision  (AP) @[ IoU=0.50      | area=   all" in run.stdout
    assert any(line.startswith("epoch 1/1 step 1/2 ") for line in lines)
    drawn = [n for n in os.listdir(tmp_path / "out") if n.startswith("val_")]
    assert len(drawn) == 2 and Image.open(tmp_path / "out" / drawn[0]).size == (384, 384)
    assert os.path.getsize(tmp_path / "out" / "detector.ckpt") > 1e6
