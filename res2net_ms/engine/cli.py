"""Entry points of ``train.py`` and ``validate.py``.

Input problems (config, data folder, checkpoint) end the run with one ``error:`` line and
exit status 2; other exceptions are bugs and keep their traceback (status 1).
"""
import sys
import traceback

from ..config import ConfigError, parse_args
from ..data import DataError
from ..process import exit_process

__all__ = ["train_main", "validate_main", "exit_process"]

_USER_ERRORS = (ConfigError, DataError)


def _user_errors():
    from .checkpoint import CheckpointError

    return _USER_ERRORS + (CheckpointError,)


def _run(run, argv, base_checkpoint, prog, description):
    try:
        args = parse_args(argv, base_checkpoint=base_checkpoint, prog=prog,
                          description=description)
        run(args)
        return 0
    except _user_errors() as exc:
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
    from .trainer import train

    return _run(train, argv, "resume", "train.py",
                "Train a Res2Net (options from --config YAML, overridden by the command line).")


def validate_main(argv=None):
    """``python validate.py``: returns the exit status."""
    from .trainer import validate

    return _run(validate, argv, "ckpt_path", "validate.py",
                "Evaluate a checkpoint: top-1, top-5, loss, images/s.")


