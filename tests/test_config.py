"""YAML + command-line configuration: precedence, strict keys and types, saved config."""
import glob
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from res2net_ms.config import (OPTIONS, ConfigError, config_to_yaml, load_yaml_config,
                               parse_args, resolve_model_defaults)
from res2net_ms.fileio import write_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_are_mindcv_names():
    names = {o.name for o in OPTIONS}
    for key in ("mode", "distribute", "device_target", "data_dir", "batch_size", "image_resize",
                "scale", "ratio", "hflip", "interpolation", "crop_pct", "color_jitter",
                "re_prob", "auto_augment", "mixup", "cutmix", "model", "num_classes",
                "pretrained", "ckpt_path", "epoch_size", "amp_level", "loss_scale",
                "loss_scale_type", "label_smoothing", "scheduler", "lr", "min_lr",
                "warmup_epochs", "decay_epochs", "opt", "momentum", "weight_decay", "ema",
                "ema_decay", "clip_grad", "val_while_train", "val_interval", "ckpt_save_dir",
                "keep_checkpoint_max", "seed"):
        assert key in names, key
    args = parse_args([])
    assert args.mode == 0 and args.jit_level == "O2" and args.device_target == "auto"


def test_yaml_sets_defaults_and_cli_overrides(tmp_path):
    cfg = _write(tmp_path, "lr: 0.05\nbatch_size: 16\nscale: [0.6, 1.0]\nema: True\n"
                           "model_kwargs: {layers: [1, 1, 1, 1]}\n")
    args = parse_args(["--config", cfg, "--lr", "0.2", "--scale", "0.5", "0.9"])
    assert args.lr == 0.2                       # command line wins
    assert args.batch_size == 16                # from the file
    assert args.scale == [0.5, 0.9]
    assert args.ema is True
    assert args.model_kwargs == {"layers": [1, 1, 1, 1]}
    args = parse_args(["-c", cfg, "--ema", "false", "--model_kwargs", "{layers: [2, 2, 2, 2]}"])
    assert args.ema is False and args.model_kwargs["layers"] == [2, 2, 2, 2]


def test_unknown_key_names_key_file_and_closest(tmp_path):
    cfg = _write(tmp_path, "lr: 0.1\nwarmup_epoch: 3\n")
    with pytest.raises(ConfigError) as info:
        parse_args(["--config", cfg])
    message = str(info.value)
    assert "warmup_epochs" in message and "'warmup_epoch'" in message and cfg in message
    assert "\n" not in message


@pytest.mark.parametrize("text, key, expected", [
    ("lr: fast\n", "lr", "a number"),
    ("batch_size: 3.5\n", "batch_size", "an integer"),
    ("ema: 'yes'\n", "ema", "true or false"),
    ("scale: 0.5\n", "scale", "a list of numbers"),
    ("scale: [0.1, 0.5, 1.0]\n", "scale", "length 2"),
    ("model: 7\n", "model", "a string"),
    ("num_classes: true\n", "num_classes", "an integer"),
    ("model_kwargs: [1]\n", "model_kwargs", "a mapping"),
])
def test_wrong_type_names_key_file_and_type(tmp_path, text, key, expected):
    cfg = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        parse_args(["--config", cfg])
    message = str(info.value)
    assert f"'{key}'" in message and cfg in message and expected in message


def test_choices_and_ranges(tmp_path):
    with pytest.raises(ConfigError, match="amp_level"):
        load_yaml_config("amp_level: O4\n", "x.yaml")
    with pytest.raises(ConfigError, match="unknown model 'res2net51'"):
        parse_args(["--model", "res2net51"])
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        parse_args(["--batch_size", "0"])
    with pytest.raises(ConfigError, match="hflip"):
        parse_args(["--hflip", "1.5"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml_config("lr: [0.1\n", "bad.yaml")
    with pytest.raises(ConfigError, match="config file"):
        parse_args(["--config", str(tmp_path / "missing.yaml")])


def _flag_values(opt, value):
    """Command-line words giving option ``opt`` the value ``value`` (every item of a list)."""
    items = [value] * (opt.length or 2) if opt.kind in ("floats", "ints") else [value]
    return [f"--{opt.name}", *[str(int(v) if opt.kind in ("int", "ints") else v)
                               for v in items]]


@pytest.mark.parametrize("opt", [o for o in OPTIONS if o.bounds], ids=lambda o: o.name)
def test_every_bound_of_the_table_is_enforced(opt):
    """Just outside each end of an option's bounds: one line naming it; on a closed end:
    accepted."""
    low, high = (float(v) for v in opt.bounds[1:-1].split(","))
    outside = [low - 1 if opt.bounds[0] == "[" else low]
    if high != float("inf"):
        outside.append(high + 1 if opt.bounds[-1] == "]" else high)
    for value in outside:
        with pytest.raises(ConfigError, match=f"^{opt.name} must be ") as info:
            parse_args(_flag_values(opt, value))
        assert "\n" not in str(info.value)
    for value, closed in ((low, opt.bounds[0] == "["), (high, opt.bounds[-1] == "]")):
        if closed and value != float("inf"):
            assert parse_args(_flag_values(opt, value)) is not None
    if opt.ascending:
        with pytest.raises(ConfigError, match=f"{opt.name} must be \\[low, high\\]"):
            parse_args([f"--{opt.name}", "0.9", "0.5"])


def test_integers_are_accepted_as_floats_and_jitter_forms():
    values = load_yaml_config("lr: 1\ncolor_jitter: [0.4, 0.4, 0.4]\n", "x.yaml")
    assert values["lr"] == 1.0 and isinstance(values["lr"], float)
    args = parse_args(["--color_jitter", "0.3"])
    assert args.color_jitter == 0.3


def test_saved_config_round_trips(tmp_path):
    args = resolve_model_defaults(parse_args(["--model", "res2net50_v1b_26w_4s", "--lr", "0.3"]))
    path = write_text(str(tmp_path / "run" / "config.yaml"), config_to_yaml(args))
    saved = yaml.safe_load(open(path))
    assert saved["lr"] == 0.3 and saved["image_resize"] == 224 and saved["crop_pct"] == 0.875
    assert "config" not in saved and "resume" not in saved
    again = parse_args(["--config", path])
    assert vars(again) == {**vars(args), "config": path}


def test_every_shipped_config_parses():
    files = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
    assert len(files) >= 10
    for path in files:
        args = resolve_model_defaults(parse_args(["--config", path]))
        assert args.model and args.epoch_size > 0


def test_recipe_values_match_mindcv():
    recipe = os.path.join(REPO, "configs", "res2net", "res2net50_26w_4s_ascend.yaml")
    args = parse_args(["--config", recipe])
    assert (args.batch_size, args.epoch_size, args.amp_level, args.loss_scale) == (32, 200, "O3",
                                                                                   1024)
    assert (args.scheduler, args.lr, args.warmup_epochs, args.decay_epochs) == (
        "cosine_decay", 0.1, 4, 196)
    assert args.distribute and args.device_target == "Ascend"
    assert (args.label_smoothing, args.re_prob, args.color_jitter) == (0.1, 0.5, 0.4)
    demo = parse_args(["--config", os.path.join(REPO, "configs/demo/digits_cpu.yaml")])
    assert demo.scale[0] >= 0.5 and demo.device_target == "CPU"


def test_cli_error_is_one_line_exit_2(tmp_path):
    cfg = _write(tmp_path, "btach_size: 8\n")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--config", cfg],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {cfg}: unknown key 'btach_size'; closest valid keys: "
                               f"batch_size")
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


@pytest.mark.parametrize("where", ["the folder", "a parent"])
def test_a_run_folder_that_cannot_be_made_is_one_line_before_compiling(tmp_path, where):
    """A file where ckpt_save_dir (or a folder above it) should be: one line, exit status 2,
    before the network is built; the file is left as it was."""
    blocker = tmp_path / "ckpt"
    blocker.write_text("not a folder")
    folder = blocker if where == "the folder" else blocker / "run"
    digits = tmp_path / "data"
    for split in ("train", "val"):
        for name in ("a", "b"):
            (digits / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
                    digits / split / name / f"{i}.png")
    start = time.time()
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--data_dir",
                           str(digits), "--num_classes", "2", "--batch_size", "2",
                           "--ckpt_save_dir", str(folder), "--resume", "auto"],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: ckpt_save_dir '{folder}' cannot be made: '{blocker}' is a file, not a folder; "
        f"remove it or choose another ckpt_save_dir"]
    assert "model res2net50_26w_4s" not in proc.stdout  # nothing was built
    assert time.time() - start < 60
    assert blocker.read_text() == "not a folder"


MINDCV_ONLY = ("amp_cast_list", "aug_repeats", "aug_splits", "aux_factor", "ckpt_save_policy",
               "dataset_download", "dataset_sink_mode", "eps", "eval_shuffle",
               "gradient_accumulation_steps", "layer_decay", "re_max_attempts", "reduction",
               "resume_opt", "val_amp_level")


def test_every_mindcv_train_setting_is_accepted():
    names = {o.name for o in OPTIONS}
    assert not [k for k in MINDCV_ONLY if k not in names]
    args = parse_args(["--gradient_accumulation_steps", "4", "--eps", "1e-8",
                       "--layer_decay", "0.7", "--ckpt_save_policy", "top_k",
                       "--val_while_train", "True", "--reduction", "sum",
                       "--amp_cast_list", "[nn.BatchNorm2d]", "--val_amp_level", "O2"])
    assert (args.gradient_accumulation_steps, args.eps, args.layer_decay) == (4, 1e-8, 0.7)
    with pytest.raises(ConfigError, match="top_k.*val_while_train"):
        parse_args(["--ckpt_save_policy", "top_k"])
    with pytest.raises(ConfigError, match="aug_splits"):
        parse_args(["--aug_splits", "2"])


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(
    REPO, "configs", "mindcv")) if n.endswith(".yaml")))
def test_mindcv_recipes_parse_verbatim(name):
    path = os.path.join(REPO, "configs", "mindcv", name)
    args = resolve_model_defaults(parse_args(["--config", path]))
    with open(path) as f:
        recipe = yaml.safe_load(f)
    for key, value in recipe.items():
        if key not in ("data_dir", "dataset"):
            expected = list(value) if isinstance(value, list) else value
            assert getattr(args, key) == expected, key
