"""Training curves: ``python -m res2net_ms.plot RUN_DIR [RUN_DIR ...] --out curves.png``.

Draws training loss, learning rate and validation top-1 per epoch from each run's
``metrics.jsonl``, several runs in one figure (one line per run). Needs matplotlib, an
optional extra: ``pip install "res2net_ms[plot]"``.
"""
import argparse
import json
import os

from .fileio import atomic_write
from .process import exit_process, run_command

__all__ = ["PANELS", "PlotError", "make_figure", "plot_runs", "read_run", "main"]

# (metrics.jsonl key, panel title)
PANELS = (("train_loss", "training loss"), ("lr", "learning rate"),
          ("val_top1", "validation top-1 (%)"))


class PlotError(ValueError):
    """A run folder without usable metrics, or matplotlib missing; the message is one line."""


def read_run(run_dir):
    """The epoch records of ``run_dir/metrics.jsonl`` (or of that file given directly)."""
    path = run_dir if os.path.isfile(run_dir) else os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise PlotError(f"{run_dir}: no metrics.jsonl (is it a train.py ckpt_save_dir?)")
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise PlotError(f"{path}:{number}: not a JSON line") from None
            if not isinstance(record, dict) or "epoch" not in record:
                raise PlotError(f"{path}:{number}: not an epoch record (no 'epoch')")
            records.append(record)
    if not records:
        raise PlotError(f"{path} holds no epoch yet")
    return records


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError('plotting needs matplotlib: pip install "res2net_ms[plot]" '
                        '(or pip install matplotlib)') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def make_figure(runs, labels):
    """A matplotlib figure of the records of ``runs``: one panel per :data:`PANELS` entry."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4), squeeze=False)
    for ax, (key, title) in zip(axes[0], PANELS):
        for records, label in zip(runs, labels):
            points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[0][0].legend()
    fig.tight_layout()
    return fig


def plot_runs(run_dirs, out, labels=None):
    """Write the figure of ``run_dirs`` to ``out`` (format from its extension); returns ``out``."""
    runs = [read_run(d) for d in run_dirs]
    labels = labels or [os.path.basename(os.path.normpath(d)) or d for d in run_dirs]
    plt = _pyplot()
    fmt = os.path.splitext(out)[1].lower().lstrip(".")
    fig = make_figure(runs, labels)
    try:
        formats = fig.canvas.get_supported_filetypes()
        if fmt not in formats:
            raise PlotError(f"cannot write {out}: use one of .{', .'.join(sorted(formats))}")
        atomic_write(out, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120))
    finally:
        plt.close(fig)
    return out


def build_parser():
    p = argparse.ArgumentParser(prog="python -m res2net_ms.plot",
                                description="Training curves of one or more runs.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="train.py ckpt_save_dir (holding metrics.jsonl)")
    p.add_argument("--out", default="curves.png", help="image to write (.png, .svg, .pdf)")
    p.add_argument("--labels", nargs="+", help="legend names of the runs (default: folders)")
    return p


def _command(args):
    if args.labels and len(args.labels) != len(args.runs):
        raise PlotError(f"{len(args.labels)} labels for {len(args.runs)} runs")
    plot_runs(args.runs, args.out, args.labels)
    print(f"wrote {args.out}: {', '.join(t for _, t in PANELS)} of {len(args.runs)} run(s)")


def main(argv=None):
    return run_command(build_parser, _command, argv)


if __name__ == "__main__":
    exit_process(main())
