"""Training curves from metrics.jsonl, and the model summary whose GMACs fill the README table."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

import res2net_ms
from conftest import REPO
from res2net_ms.models import MODELS
from res2net_ms.plot import PANELS, make_figure, read_run
from res2net_ms.plot import main as plot_main
from res2net_ms.summary import format_summary, summarize
from res2net_ms.summary import main as summary_main

pytest.importorskip("matplotlib")


def _write_run(folder, losses, lrs, top1):
    """A run folder as train.py leaves it (the keys plot reads, and others it ignores)."""
    os.makedirs(folder)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for epoch, (loss, lr, acc) in enumerate(zip(losses, lrs, top1), 1):
            record = {"epoch": epoch, "global_step": 44 * epoch, "lr": lr, "train_loss": loss,
                      "train_seconds": 9.5, "val_top1": acc, "val_top5": 100.0}
            f.write(json.dumps(record) + "\n")
    return folder


@pytest.fixture
def runs(tmp_path):
    return [_write_run(str(tmp_path / "adamw"), [1.4, 1.1, 0.8], [2e-3, 1e-3, 1e-6],
                       [30.0, 95.0, 98.6]),
            _write_run(str(tmp_path / "sgd"), [2.0, 1.5], [0.1, 0.05], [20.0, 80.0])]


def test_figure_draws_each_runs_values(runs):
    fig = make_figure([read_run(r) for r in runs], ["adamw", "sgd"])
    for ax, (key, _) in zip(fig.axes, PANELS):
        assert [line.get_label() for line in ax.get_lines()] == ["adamw", "sgd"]
        expected = [[rec[key] for rec in read_run(r)] for r in runs]
        assert [list(line.get_ydata()) for line in ax.get_lines()] == expected
        assert list(ax.get_lines()[1].get_xdata()) == [1, 2]


def test_plot_command_writes_the_image(runs, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert plot_main([*runs, "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: training loss, learning rate")
    assert Image.open(out).size == (1800, 480)  # 15 x 4 inches at 120 dpi


def test_plot_bad_input_one_line_and_status_2(runs, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.jsonl").write_text('{"epoch": 1, "lr": 0.1}\n{"epoch": 2, ')
    cases = [([str(tmp_path / "nothing")], "no metrics.jsonl"),
             ([str(broken)], "metrics.jsonl:2: not a JSON line"),
             ([runs[0], "--out", str(tmp_path / "c.xyz")], "cannot write"),
             ([runs[0], "--labels", "a", "b"], "2 labels for 1 runs")]
    for argv, expected in cases:
        assert plot_main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: ") and err.count("\n") == 1
        assert expected in err, err
    assert not (tmp_path / "c.xyz").exists()


def test_plot_without_matplotlib_says_how_to_get_it(runs, tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from res2net_ms.plot import main\n"
            f"sys.exit(main([{runs[0]!r}, '--out', {str(tmp_path / 'c.png')!r}]))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        'error: plotting needs matplotlib: pip install "res2net_ms[plot]" (or pip install '
        'matplotlib)')


def test_summary_counts_parameters_macs_and_stages():
    s = summarize("res2net50", 224)
    assert s["model"] == "res2net50_26w_4s" and s["params"] == MODELS[s["model"]].params
    assert round(s["gmacs"], 2) == MODELS[s["model"]].counted_gmacs == 4.26
    assert [(st["channels"], st["stride"], st["shape"][1:]) for st in s["stages"]] == [
        (64, 2, (112, 112)), (256, 4, (56, 56)), (512, 8, (28, 28)), (1024, 16, (14, 14)),
        (2048, 32, (7, 7))]
    assert s["head_gmacs"] == 2048 * 1000 / 1e9
    text = format_summary(s)
    assert text.splitlines()[0] == ("res2net50_26w_4s at 224x224: 25,699,120 trainable "
                                    "parameters, 4.26 GMACs (convolutions and classifier; "
                                    "published 4.2 at 224)")
    assert text.splitlines()[6].split()[:5] == ["4", "layer4", "2048", "32", "7x7"]


def test_summary_command_other_size_and_bad_input(capsys):
    assert summary_main(["res2next_dla60", "--image-size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("res2next_dla60 at 64x64: 17,330,456 trainable parameters")
    assert [line.split()[4] for line in lines[2:8]] == ["64x64", "32x32", "16x16", "8x8", "4x4",
                                                        "2x2"]
    for argv, expected in ((["res2net5"], "unknown model 'res2net5'"),
                           (["res2net50", "--image-size", "16"], "too small"),
                           (["res2next_dla60", "--image-size", "65"], "cannot run on 65x65")):
        assert summary_main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: ") and err.count("\n") == 1
        assert expected in err, err


# Published GMACs have one decimal; the ResNet layouts agree within 1.5 %. The official DLA
# code also runs the "project" convs of its multi-level trees, whose output it never uses
# (0.08 GMACs at 224, skipped by this network): there the published figures are up to 4 %
# above the count. (test_models.py recounts every model: one build per model for all its
# checks.)
TOLERANCE = {"ResNet": 0.015, "DLA": 0.04}


@pytest.mark.parametrize("name", [n for n in res2net_ms.list_models() if MODELS[n].gmacs])
def test_counted_gmacs_agree_with_the_published(name):
    cfg = MODELS[name]
    layout = "DLA" if cfg.arch.__name__ == "DLA" else "ResNet"
    assert abs(cfg.counted_gmacs - cfg.gmacs) <= TOLERANCE[layout] * cfg.gmacs
