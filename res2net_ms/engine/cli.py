"""Entry points of ``train.py`` and ``validate.py``.

Input problems (config, data folder, checkpoint), a disk that cannot take a checkpoint and a
loss that stays non-finite end the run with one ``error:`` line and exit status 2; other
exceptions are bugs and keep their traceback (status 1).
"""
import sys
import traceback

from ..config import ConfigError, parse_args, peek_option
from ..data import DataError
from ..fileio import WriteError
from ..process import exit_process
from ..run_state import CheckpointError, read_run_state
from .detection import train_detector_run, validate_detector
from .loop import TrainingDiverged
from .trainer import train, validate

__all__ = ["train_main", "validate_main", "parse_run_args", "exit_process"]

# Bad input, a full disk, a diverged loss: one line each; anything else is a bug.
_USER_ERRORS = (ConfigError, DataError, CheckpointError, WriteError, TrainingDiverged)


def parse_run_args(argv=None, base_checkpoint=None, prog=None, description=None):
    """:func:`~res2net_ms.config.parse_args`, with the config stored in the training
    checkpoint named by option ``base_checkpoint`` (``resume`` or ``ckpt_path``) as the base
    when no ``--config`` is given."""
    argv = sys.argv[1:] if argv is None else list(argv)
    stored = None
    if base_checkpoint and not peek_option(argv, "config"):
        path = peek_option(argv, base_checkpoint)
        state = read_run_state(path) if path else None
        if state and state.config:
            stored = (state.config, f"{path} (stored config)")
    return parse_args(argv, stored_config=stored, prog=prog, description=description)


def _run(run, run_detector, argv, base_checkpoint, prog, description):
    """Parse, then run a classifier or (with ``detector`` set) a detector; the exit status."""
    try:
        args = parse_run_args(argv, base_checkpoint, prog, description)
        (run_detector if args.detector else run)(args)
        return 0
    except _USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except Exception:  # noqa: BLE001 - a bug: show where, exit 1
        traceback.print_exc()
        return 1


def train_main(argv=None):
    """``python train.py``: returns the exit status."""
    return _run(train, train_detector_run, argv, "resume", "train.py",
                "Train a Res2Net or a detector (options from --config YAML, overridden by the "
                "command line).")


def validate_main(argv=None):
    """``python validate.py``: returns the exit status."""
    return _run(validate, validate_detector, argv, "ckpt_path", "validate.py",
                "Evaluate a checkpoint: top-1, top-5, loss, images/s (a detector: COCO's box "
                "and mask AP).")
