"""Real training on the digits ImageFolder (32 px, 2 CPU cores).

A one-block-per-stage Res2Net-50 keeps this file to a few minutes; every other setting comes
from the demo config, so these runs also exercise it.
"""
import os

import numpy as np
import pytest

import mindspore as ms

from conftest import DEMO, LIGHT, REPO, ckpt_arrays, read_metrics, run_args, tiny_split
from res2net_ms.ckpt import save_ckpt
from res2net_ms.config import parse_args
from res2net_ms.engine import (build_network, load_weights, parse_run_args, read_run_state,
                               seed_everything, train, validate)

pytestmark = pytest.mark.slow


def test_training_learns_and_writes_its_files(trained):
    """conftest's ``trained``: three epochs on all of digits with EMA, two numbered
    checkpoints kept."""
    summary, save_dir = trained
    rows = read_metrics(save_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < 0.6 * rows[0]["train_loss"]
    assert rows[-1]["val_top1"] >= 85.0, rows
    assert summary["best_top1"] == max(r["val_top1"] for r in rows)
    files = sorted(os.listdir(save_dir))
    assert files == ["best.ckpt", "config.yaml", "last.ckpt", "metrics.jsonl",
                     "res2net50_26w_4s-e0002.ckpt", "res2net50_26w_4s-e0003.ckpt", "train.log"]
    state = ms.load_checkpoint(os.path.join(save_dir, "last.ckpt"))
    for key in ("conv1.weight", "fc.weight", "layer1.0.bn1.moving_mean", "global_step",
                "adam_m.fc.weight", "adam_v.conv1.weight", "ema.fc.weight",
                "ema.layer1.0.bn1.moving_mean", "ema_updates", "scale_sense"):
        assert key in state, key
    assert "learning_rate" not in state          # rebuilt from the config on resume
    meta = read_run_state(os.path.join(save_dir, "last.ckpt"))
    assert (meta.epoch, meta.global_step, meta.has_ema) == (3, 3 * 44, True)
    assert "model: res2net50_26w_4s" in meta.config
    assert read_run_state(os.path.join(save_dir, "best.ckpt")).classes == \
        [str(i) for i in range(10)]
    with open(os.path.join(save_dir, "train.log")) as f:
        log = f.read()
    assert "epoch 3/3" in log and "val (EMA) top-1" in log


def test_validate_reproduces_the_training_number(trained):
    """validate() in this process; validate.py in its own (from another folder, the config
    read from the checkpoint) reproduces a run's number in test_faults' skip_bad_images test.
    An uninterrupted run's number reproduced by a resumed one: test_faults."""
    summary, save_dir = trained
    best = os.path.join(save_dir, "best.ckpt")
    row = next(r for r in read_metrics(save_dir) if r["epoch"] == summary["best_epoch"])
    # No --config: validate.py takes the run's config (EMA included) from the checkpoint.
    result = validate(parse_run_args(["--ckpt_path", best, "--progress_bar", "off"],
                                     base_checkpoint="ckpt_path"))
    assert result["images"] == 360
    assert result["top1"] == row["val_top1"] and result["top5"] == row["val_top5"]
    assert result["loss"] == pytest.approx(row["val_loss"], rel=1e-5)
    raw = validate(parse_run_args(["--ckpt_path", best, "--ema", "False"],
                                  base_checkpoint="ckpt_path"))
    assert raw["images"] == 360 and raw["top1"] > 50


def test_resume_rejects_plain_weights(digits_dir, tmp_path):
    net = build_network(parse_args(["--num_classes", "10", "--model_kwargs",
                                    "{layers: [1, 1, 1, 1]}"]))
    plain = str(tmp_path / "weights.ckpt")
    ms.save_checkpoint(net, plain)
    from res2net_ms.engine import CheckpointError

    with pytest.raises(CheckpointError, match="not a training checkpoint.*--ckpt_path"):
        train(run_args(digits_dir, tmp_path / "run", "--resume", plain))
    assert not os.path.exists(tmp_path / "run")


def _five_class_folder(digits_dir, root):
    for split in ("train", "val"):
        for label in range(5):
            os.makedirs(os.path.join(root, split), exist_ok=True)
            os.symlink(os.path.join(digits_dir, split, str(label)),
                       os.path.join(root, split, str(label)))
    return str(root)


def test_finetune_other_num_classes_with_frozen_stem(trained, digits_dir, tmp_path, capsys):
    _, save_dir = trained
    source = os.path.join(save_dir, "best.ckpt")
    data = _five_class_folder(digits_dir, tmp_path / "five")
    out = tmp_path / "ft"
    summary = train(run_args(data, out, "--ckpt_path", source, "--num_classes", "5",
                          "--epoch_size", "1", "--warmup_epochs", "0", "--lr", "0.0005",
                          "--frozen_stages", "1", "--ema", "False"))
    log = capsys.readouterr().out
    assert "classifier re-initialised: the checkpoint has 10 classes, the model 5" in log
    assert summary["best_top1"] >= 90.0
    before, after = ckpt_arrays(source), ckpt_arrays(os.path.join(out, "last.ckpt"))
    assert after["fc.weight"].shape == (5, 2048)
    for key in ("conv1.weight", "layer1.0.convs.0.weight", "layer1.0.bn1.moving_mean"):
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    assert not np.array_equal(before["layer3.0.conv1.weight"], after["layer3.0.conv1.weight"])


def test_weights_from_plain_and_pytorch_files(tmp_path):
    light = ["--model_kwargs", "{layers: [1, 1, 1, 1]}"]
    source = build_network(parse_args(["--num_classes", "10", *light]))
    plain = str(tmp_path / "plain.ckpt")
    ms.save_checkpoint(source, plain)
    target = build_network(parse_args(["--num_classes", "3", *light]))
    notes = load_weights(target, plain, "res2net50_26w_4s")
    assert any("re-initialised: the checkpoint has 10 classes, the model 3" in n for n in notes)
    np.testing.assert_array_equal(target.conv1.weight.asnumpy(), source.conv1.weight.asnumpy())
    assert target.fc.weight.shape == (3, 2048)

    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    reference = timm.create_model("res2net50_26w_4s", pretrained=False)
    pth = str(tmp_path / "timm.pth")
    torch.save(reference.state_dict(), pth)
    net = build_network(parse_args(["--num_classes", "10"]))
    notes = load_weights(net, pth, "res2net50_26w_4s")
    assert any("re-initialised: the checkpoint has 1000 classes, the model 10" in n
               for n in notes)
    np.testing.assert_allclose(net.conv1.weight.asnumpy(),
                               reference.conv1.weight.detach().numpy(), rtol=0, atol=0)


def test_training_in_pynative_mode_runs(digits_dir, tmp_path):
    """Four steps and a validation (of 40 images: PyNative runs an op at a time)."""
    data = tiny_split(digits_dir, tmp_path / "data", per_class=13, val_per_class=4)
    save_dir = tmp_path / "run"
    train(run_args(data, save_dir, "--epoch_size", "1", "--num_samples", "128",
                   "--warmup_epochs", "0", "--mode", "1"))
    row = read_metrics(save_dir)[0]
    assert row["global_step"] == 4 and row["val_images"] == 40


def test_distribute_without_launcher_is_refused(digits_dir):
    from res2net_ms.config import ConfigError

    recipe = os.path.join(REPO, "configs", "res2net", "res2net50_26w_4s_ascend.yaml")
    with pytest.raises(ConfigError, match="no launcher started this process"):
        train(parse_args(["--config", recipe, "--data_dir", digits_dir]))


def test_pretrained_weights_come_from_the_cache(tmp_path):
    from res2net_ms.weights import CheckpointError, pretrained_file

    cached = tmp_path / "res2net50_26w_4s-06e79181.ckpt"  # the converted official file
    save_ckpt({"fc.bias": np.zeros(1000, np.float32)}, cached)
    assert pretrained_file("res2net50", cache_dir=str(tmp_path)) == str(cached)
    with pytest.raises(CheckpointError, match="no downloadable weights"):
        pretrained_file("res2net152_26w_4s", cache_dir=str(tmp_path))


def test_amp_with_overflowing_scale_and_options_runs_and_logs_the_optimizers_lr(digits_dir,
                                                                                tmp_path):
    """AMP O2 with a dynamic loss scale of 1e30 (it overflows float16), gradient clipping,
    mixup/cutmix, colour jitter, random erasing, momentum and step decay run together;
    overflowing steps are skipped until the scale has come down, and a skipped step does not
    advance the optimizer, so the logged learning rate is the table's at the optimizer's own
    step count, not at the batch count (the two warm-up epochs make it change every step)."""
    from mindcv.scheduler import create_scheduler

    save_dir = tmp_path / "run"
    train(run_args(digits_dir, save_dir, "--epoch_size", "2", "--num_samples", "128",
                   "--amp_level", "O2", "--loss_scale", "1e30", "--loss_scale_type", "dynamic",
                   "--loss_scale_factor", "1e10", "--clip_grad", "True", "--clip_value", "1.0",
                   "--mixup", "0.2", "--cutmix", "1.0", "--cutmix_prob", "0.5",
                   "--color_jitter", "0.4", "--re_prob", "0.25", "--opt", "momentum",
                   "--lr", "0.01", "--scheduler", "step_decay", "--decay_epochs", "1",
                   "--warmup_epochs", "2"))
    rows = read_metrics(save_dir)
    first = rows[0]
    assert first["global_step"] == 4 and first["val_images"] == 360
    assert first["skipped_steps"] >= 1 and first["loss_scale"] < 1e30
    assert first["train_loss"] is not None
    skipped = sum(r["skipped_steps"] for r in rows)
    # Both epochs are warm-up: step_decay has no step left to decay.
    table = create_scheduler(4, scheduler="step_decay", lr=0.01, min_lr=0.0, warmup_epochs=2,
                             decay_epochs=1, num_epochs=2)
    row = rows[-1]
    assert row["lr"] == pytest.approx(table[row["global_step"] - skipped - 1], rel=1e-6)
    assert row["lr"] != pytest.approx(table[row["global_step"] - 1], rel=1e-6)


def test_gradient_accumulation_equals_the_larger_batch(digits_dir, tmp_path):
    """mindcv's gradient_accumulation_steps: 2 batches of 8 then one update equal one batch
    of 16 (BN in inference mode, constant learning rate, no weight decay)."""
    common = ["--epoch_size", "1", "--num_samples", "16", "--shuffle", "False",
              "--norm_eval", "True", "--scale", "1", "1", "--ratio", "1", "1", "--opt",
              "momentum", "--lr", "0.5", "--scheduler", "constant", "--warmup_epochs", "0",
              "--weight_decay", "0", "--val_while_train", "False", "--deterministic", "True"]
    train(run_args(digits_dir, tmp_path / "acc", *common, "--batch_size", "8",
                   "--gradient_accumulation_steps", "2"))
    train(run_args(digits_dir, tmp_path / "big", *common, "--batch_size", "16"))
    acc, big = ckpt_arrays(tmp_path / "acc" / "last.ckpt"), ckpt_arrays(tmp_path / "big" /
                                                                        "last.ckpt")
    seed_everything(42)                             # the runs' initial weights
    net = build_network(parse_args(["--config", DEMO, *LIGHT]))
    moved = 0
    for p in net.trainable_params():
        np.testing.assert_allclose(acc[p.name], big[p.name], rtol=0, atol=2e-5, err_msg=p.name)
        moved += not np.allclose(acc[p.name], p.asnumpy())
    assert moved > 10
    assert acc["accum_micro_steps"] == 0 and not np.any(acc["accum.fc.weight"])
