"""ImageFolder checks, the digits writer and the mindcv-built loaders."""
import os
import shutil
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

from res2net_ms.config import parse_args, resolve_model_defaults
from res2net_ms.data import (DataError, EvalData, TrainData, build_transforms,
                             check_imagefolder, epoch_order, write_digits_imagefolder)
from res2net_ms.fileio import TEMP_MARK

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _image(path, size=8):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(path)


def _folder(root, layout):
    """layout: {split: {class: number of images}}"""
    for split, classes in layout.items():
        for name, count in classes.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(count):
                _image(os.path.join(root, split, name, f"{i}.png"))
    return str(root)


def test_digits_folder(digits_dir):
    info = check_imagefolder(digits_dir, 10)
    assert info["classes"] == [str(i) for i in range(10)]
    assert info["counts"] == {"train": 1437, "val": 360}
    image = Image.open(os.path.join(digits_dir, "val", "3", sorted(
        os.listdir(os.path.join(digits_dir, "val", "3")))[0]))
    assert image.mode == "RGB" and image.size == (32, 32)


def test_digits_split_is_fixed_by_seed(tmp_path, digits_dir):
    again = write_digits_imagefolder(str(tmp_path / "d"), seed=0, size=8)
    for split in ("train", "val"):
        for label in ("0", "7"):
            assert (sorted(os.listdir(os.path.join(again, split, label)))
                    == sorted(os.listdir(os.path.join(digits_dir, split, label))))
    other = write_digits_imagefolder(str(tmp_path / "e"), seed=1, size=8)
    assert (sorted(os.listdir(os.path.join(other, "val", "0")))
            != sorted(os.listdir(os.path.join(again, "val", "0"))))
    assert not [n for n in os.listdir(tmp_path) if TEMP_MARK in n]


@pytest.mark.parametrize("case, match", [
    ("no_data_dir", "data_dir is not set"),
    ("missing_dir", "does not exist"),
    ("missing_val", "split folder '.*val' is missing"),
    ("no_classes", "has no class folders"),
    ("empty_class", "empty class folder: .*train.b has no images"),
    ("different_classes", "class folders differ between train/ and val/.*only in val/: c"),
    ("num_classes", "num_classes is 5 but .* has 2 class folders .*set num_classes: 2"),
])
def test_bad_folders_raise_one_clear_error(tmp_path, case, match):
    good = {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}}
    num_classes = 2
    if case == "no_data_dir":
        root = ""
    elif case == "missing_dir":
        root = str(tmp_path / "nothing")
    elif case == "missing_val":
        root = _folder(tmp_path, {"train": good["train"]})
    elif case == "no_classes":
        root = _folder(tmp_path, good)
        shutil.rmtree(os.path.join(root, "val"))
        os.makedirs(os.path.join(root, "val"))
    elif case == "empty_class":
        root = _folder(tmp_path, {"train": {"a": 2, "b": 0}, "val": {"a": 1, "b": 1}})
        (tmp_path / "train" / "b" / "notes.txt").write_text("not an image")
    elif case == "different_classes":
        root = _folder(tmp_path, {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1, "c": 1}})
    else:
        root = _folder(tmp_path, good)
        num_classes = 5
    with pytest.raises(DataError, match=match) as info:
        check_imagefolder(root, num_classes)
    assert "\n" not in str(info.value)


def _args(digits_dir, *extra):
    return resolve_model_defaults(parse_args([
        "--data_dir", digits_dir, "--num_classes", "10", "--image_resize", "24",
        "--batch_size", "50", "--num_parallel_workers", "2", "--crop_pct", "0.75",
        *extra]))


def test_yaml_scale_reaches_the_crop(tmp_path, digits_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("scale: [0.6, 1.0]\nratio: [0.8, 1.25]\nhflip: 0.0\n")
    args = _args(digits_dir, "--config", str(cfg))
    crop = build_transforms(args, True)[0]
    assert type(crop).__name__ == "RandomCropDecodeResize"
    assert tuple(crop.scale) == (0.6, 1.0) and tuple(crop.ratio) == (0.8, 1.25)
    assert crop.size == (24, 24)
    assert not any(type(t).__name__ == "RandomHorizontalFlip" for t in build_transforms(args, True))


def test_eval_transform_resizes_by_crop_pct(digits_dir):
    ops = build_transforms(_args(digits_dir), False)
    names = [type(t).__name__ for t in ops]
    assert names[:3] == ["Decode", "Resize", "CenterCrop"]
    assert ops[1].py_size == 32                        # floor(24 / 0.75)
    assert ops[2].size == (24, 24)


def test_train_order_is_fixed_per_epoch(digits_dir):
    args = _args(digits_dir, "--scale", "1", "1", "--ratio", "1", "1", "--hflip", "0")

    data = TrainData(args, check_imagefolder(digits_dir)["samples"]["train"])

    def labels(epoch):
        return np.concatenate([b[1].asnumpy() for b in data.batches(epoch)])

    first = labels(0)
    assert first.shape == (1400,)                     # 28 full batches of 50
    assert np.array_equal(first, labels(0))
    assert not np.array_equal(first, labels(1))


def test_eval_shards_cover_every_image_once(digits_dir):
    args = _args(digits_dir)
    samples = check_imagefolder(digits_dir)["samples"]["val"]
    batches = list(EvalData(args, samples).batches())
    single = np.concatenate([b[1] for b in batches])
    assert single.shape == (360,) and batches[-1][0].shape == (10, 3, 24, 24)
    shards = [np.concatenate([b[1] for b in EvalData(args, samples, r, 7).batches()])
              for r in range(7)]
    assert sum(len(s) for s in shards) == 360          # 52 + 6 x 51: uneven, nothing repeated
    assert sorted(np.concatenate(shards).tolist()) == sorted(single.tolist())


def test_bad_data_stops_the_cli_before_compiling(tmp_path):
    root = _folder(tmp_path / "data", {"train": {"a": 2, "b": 2}, "val": {"a": 1}})
    start = time.time()
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "train.py"), "--data_dir", root, "--num_classes",
         "2", "--val_while_train", "True", "--ckpt_save_dir", str(tmp_path / "ck")],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: class folders differ between train/ and val/ in '{root}': only in train/: b; "
        f"only in val/: none"]
    assert not os.path.exists(tmp_path / "ck")
    assert time.time() - start < 60


def _copy_digits(digits_dir, root, per_class=6, val_per_class=2):
    """A small copy of digits: ``per_class`` training images per class, sorted by name."""
    for split, count in (("train", per_class), ("val", val_per_class)):
        for cls in sorted(os.listdir(os.path.join(digits_dir, split))):
            src, dst = os.path.join(digits_dir, split, cls), os.path.join(root, split, cls)
            os.makedirs(dst)
            for name in sorted(os.listdir(src))[:count]:
                shutil.copy(os.path.join(src, name), dst)
    return str(root)


def _corrupt(path, how):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write({"truncated": data[: len(data) // 2], "garbage": b"\x89PNG\r\n\x1a\n garbage",
                 "text": b"just some notes, not an image"}[how])


def _train_data(root, *extra):
    args = _args(root, "--batch_size", "8", "--scale", "1", "1", "--ratio", "1", "1",
                 "--hflip", "0", "--deterministic", "True", *extra)
    return TrainData(args, check_imagefolder(root, 10)["samples"]["train"])


@pytest.mark.parametrize("how", ["truncated", "garbage", "text"])
def test_a_bad_image_is_named_in_one_line(digits_dir, tmp_path, how):
    root = _copy_digits(digits_dir, tmp_path / "data")
    victim = os.path.join(root, "train", "3", sorted(os.listdir(os.path.join(root, "train",
                                                                             "3")))[1])
    _corrupt(victim, how)
    data = _train_data(root)
    with pytest.raises(DataError) as info:
        list(data.batches(0))
    message = str(info.value)
    assert "\n" not in message and victim in message
    assert "skip_bad_images" in message and "res2net_ms.data check" in message


def test_skip_bad_images_replaces_and_counts(digits_dir, tmp_path):
    root = _copy_digits(digits_dir, tmp_path / "data")
    victim = os.path.join(root, "train", "7", sorted(os.listdir(os.path.join(root, "train",
                                                                             "7")))[0])
    _corrupt(victim, "truncated")
    data = _train_data(root, "--skip_bad_images", "True")
    batches = list(data.batches(0))
    assert data.skipped == [victim]
    assert len(batches) == data.steps_per_epoch == 60 // 8   # the epoch keeps its length
    again = list(data.batches(0))                            # and stays the same
    for (a, la), (b, lb) in zip(batches, again):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def _arrays(batches):
    """The images and the labels of ``batches`` (tensors or arrays), each concatenated."""
    def numpy(x):
        return x.asnumpy() if hasattr(x, "asnumpy") else x
    return [np.concatenate([numpy(batch[i]) for batch in batches]) for i in (0, 1)]


def test_a_bad_validation_image_is_named_or_left_out_and_counted(digits_dir, tmp_path):
    root = _copy_digits(digits_dir, tmp_path / "data")
    samples = check_imagefolder(root, 10)["samples"]["val"]
    victim = samples[7][0]
    _corrupt(victim, "truncated")
    with pytest.raises(DataError) as info:
        list(EvalData(_args(root, "--batch_size", "4"), samples).batches())
    message = str(info.value)
    assert "\n" not in message and victim in message and "skip_bad_images" in message
    args = _args(root, "--batch_size", "4", "--skip_bad_images", "True")
    data = EvalData(args, samples)
    first, again = list(data.batches()), list(data.batches())  # the second pass: left out
    assert data.skipped == [victim]
    without = _arrays(list(EvalData(args, [s for s in samples if s[0] != victim]).batches()))
    for batches in (first, again):
        for got, expected in zip(_arrays(batches), without):
            np.testing.assert_array_equal(got, expected)
    assert len(without[1]) == len(samples) - 1


def test_the_sink_path_names_or_replaces_a_bad_image(digits_dir, tmp_path, monkeypatch):
    """With a device data sink (Ascend/GPU; emulated on CPU by a sink whose every call pulls
    the next batch and runs the step on it) a bad image is named, or replaced and counted,
    as when the loop feeds the batches."""
    def cpu_sink(step, dataset, sink_size=1):
        batches = dataset.create_tuple_iterator(num_epochs=1)
        return lambda: step(*next(batches))

    def step(images, labels):
        return images.asnumpy(), labels.asnumpy()

    monkeypatch.setattr(ms, "data_sink", cpu_sink)
    root = _copy_digits(digits_dir, tmp_path / "data")
    victim = os.path.join(root, "train", "2", sorted(os.listdir(os.path.join(root, "train",
                                                                             "2")))[3])
    _corrupt(victim, "garbage")
    with pytest.raises(DataError) as info:
        list(_train_data(root).sink_steps(step, 0))
    assert victim in str(info.value) and "\n" not in str(info.value)
    sunk, fed = (_train_data(root, "--skip_bad_images", "True") for _ in range(2))
    outputs, batches = list(sunk.sink_steps(step, 0)), list(fed.batches(0))
    assert sunk.skipped == fed.skipped == [victim]
    assert len(outputs) == len(batches) == sunk.steps_per_epoch
    for got, expected in zip(_arrays(outputs), _arrays(batches)):
        np.testing.assert_array_equal(got, expected)


def test_resumed_epoch_skips_batches_without_reading_them(digits_dir, tmp_path):
    """Steps 0..2 of an epoch are never decoded when resuming at step 3: corrupt their files
    and the remaining batches still equal those of the uninterrupted epoch."""
    root = _copy_digits(digits_dir, tmp_path / "data")
    data = _train_data(root)
    full = [b.asnumpy() for b, _ in data.batches(1)]
    order = data._order(1)
    for index in order[: 3 * 8]:
        _corrupt(data.samples[index][0], "garbage")
    resumed = [b.asnumpy() for b, _ in data.batches(1, start_step=3)]
    assert len(resumed) == len(full) - 3
    for a, b in zip(resumed, full[3:]):
        np.testing.assert_array_equal(a, b)


def test_shards_are_equal_and_cover_the_epoch():
    for n, size, repeats in ((1437, 2, 0), (65, 2, 0), (20, 3, 3), (16, 2, 0)):
        shards = [epoch_order(n, 4, seed=42, repeats=repeats, rank=r, group_size=size)
                  for r in range(size)]
        assert len({len(s) for s in shards}) == 1            # equal steps on every rank
        assert len(shards[0]) == -(-n // size)
        covered = set(np.concatenate(shards).tolist())
        assert covered == set(range(n)) or repeats > 1
    one = epoch_order(100, 0, seed=1)
    assert sorted(one.tolist()) == list(range(100))
    assert not np.array_equal(one, epoch_order(100, 1, seed=1))
    np.testing.assert_array_equal(epoch_order(10, 3, seed=0, shuffle=False), np.arange(10))


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "tiny"])
def test_unusual_images_train_as_rgb(tmp_path, mode):
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(4):
                size = 5 if mode == "tiny" else 40
                image = Image.fromarray(rng.randint(0, 255, (size, size, 3), np.uint8))
                if mode != "tiny":
                    image = image.convert(mode)
                image.save(folder / f"{i}.{'jpg' if mode == 'CMYK' else 'png'}")
    args = resolve_model_defaults(parse_args([
        "--data_dir", str(tmp_path), "--num_classes", "2", "--image_resize", "24",
        "--batch_size", "4", "--num_parallel_workers", "1"]))
    data = TrainData(args, check_imagefolder(str(tmp_path), 2)["samples"]["train"])
    shapes = {tuple(b.shape) for b, _ in data.batches(0)}
    assert shapes == {(4, 3, 24, 24)}


@pytest.mark.slow
def test_check_command_lists_every_problem(digits_dir, tmp_path):
    root = _copy_digits(digits_dir, tmp_path / "data", per_class=2)
    bad = os.path.join(root, "train", "5", sorted(os.listdir(os.path.join(root, "train",
                                                                          "5")))[0])
    _corrupt(bad, "truncated")
    (tmp_path / "data" / "train" / "5" / "readme.txt").write_text("notes")
    os.makedirs(os.path.join(root, "val", "extra"))
    proc = subprocess.run([sys.executable, "-m", "res2net_ms.data", "check", root],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert f"bad image: {bad}: " in out
    assert "readme.txt: not an image extension" in out
    assert "empty class folder" in out and "extra" in out
    assert "Traceback" not in proc.stderr
    clean = subprocess.run([sys.executable, "-m", "res2net_ms.data", "check", digits_dir],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert clean.returncode == 0 and "1797 images checked" in clean.stdout
