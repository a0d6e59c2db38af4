"""``python -m res2net_ms.data check DATA_DIR``: every problem of a data folder, before a run.

Decodes every image of the splits in parallel and lists the ones that fail, the layout
problems that would stop training, and the files the loader would ignore. Exit status 0 when
the folder is ready to train on, 1 when it is not, 2 for a wrong command line.
"""
import argparse

from ..process import exit_process
from .images import check_data_dir


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m res2net_ms.data",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="decode every image and list the problems")
    check.add_argument("data_dir", help="folder holding the splits, one folder per class")
    check.add_argument("--splits", nargs="+", default=["train", "val"],
                       help="sub-folders to check (default: train val)")
    check.add_argument("--workers", type=int, default=None, help="decoding threads")
    args = parser.parse_args(argv)
    report = check_data_dir(args.data_dir, tuple(args.splits), args.workers)
    for line in report["errors"]:
        print(f"error: {line}")
    for path, problem in report["bad"]:
        print(f"bad image: {path}: {problem}")
    for path, why in report["ignored"]:
        print(f"ignored: {path}: {why}")
    ok = not report["errors"] and not report["bad"]
    print(f"{report['images']} images checked in {report['seconds']:.1f} s: "
          f"{len(report['bad'])} undecodable, {len(report['errors'])} layout problems, "
          f"{len(report['ignored'])} files ignored; "
          + ("ready to train" if ok else "fix these before training"))
    return 0 if ok else 1


if __name__ == "__main__":
    exit_process(main())
