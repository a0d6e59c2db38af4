"""``make demo``: digits as an ImageFolder, train a Res2Net on CPU, validate the best checkpoint.

Runs ``train.py`` and ``validate.py`` as a user would, from the repository root, and prints the
validation top-1 of the best checkpoint as the last line (``top-1: XX.XX%``). Extra arguments
go to ``train.py`` (e.g. ``--epoch_size 3``). Exit status 1 if the top-1 is under 97%.

The demo owns its ``--ckpt_save_dir``: run again, it trains from scratch and replaces the
previous demo run (``train.py --overwrite True``), because a demo shows a whole training and
resuming a finished run would train nothing. ``--resume auto`` continues it instead.
"""
import argparse
import os
import re
import subprocess
import sys
import time

from .data import write_digits_imagefolder

TARGET_TOP1 = 97.0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd, capture=False):
    print("+ " + " ".join(cmd), flush=True)
    if not capture:
        return subprocess.run(cmd, cwd=REPO).returncode, ""
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout)
    sys.stdout.flush()
    return proc.returncode, proc.stdout


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m res2net_ms.demo", description=__doc__)
    parser.add_argument("--config", default="configs/demo/digits_cpu.yaml")
    parser.add_argument("--data_dir", default="data/digits")
    parser.add_argument("--ckpt_save_dir", default="ckpt/demo_digits")
    args, train_args = parser.parse_known_args(argv)
    start = time.perf_counter()
    data_dir = os.path.join(REPO, args.data_dir)
    if not all(os.path.isdir(os.path.join(data_dir, s)) for s in ("train", "val")):
        print(f"writing scikit-learn digits to {args.data_dir}", flush=True)
        write_digits_imagefolder(data_dir, val_fraction=0.2, seed=0, size=32)
    train_start = time.perf_counter()
    code, _ = _run([sys.executable, "train.py", "--config", args.config, "--data_dir",
                    args.data_dir, "--ckpt_save_dir", args.ckpt_save_dir, "--overwrite", "True",
                    *train_args])
    if code != 0:
        print(f"demo: train.py failed (exit {code})", file=sys.stderr)
        return code
    train_seconds = time.perf_counter() - train_start
    best = os.path.join(args.ckpt_save_dir, "best.ckpt")
    code, out = _run([sys.executable, "validate.py", "--ckpt_path", best, "--data_dir",
                      args.data_dir], capture=True)
    match = re.search(r"top-1: ([0-9.]+)%", out)
    if code != 0 or not match:
        print(f"demo: validate.py failed (exit {code})", file=sys.stderr)
        return code or 1
    top1 = float(match.group(1))
    total = time.perf_counter() - start
    print(f"demo: {total:.0f} s in all, training {train_seconds:.0f} s; target top-1 "
          f">= {TARGET_TOP1:.0f}%{'' if top1 >= TARGET_TOP1 else ' NOT reached'}")
    print(f"top-1: {top1:.2f}%", flush=True)
    return 0 if top1 >= TARGET_TOP1 else 1


if __name__ == "__main__":
    sys.exit(main())
