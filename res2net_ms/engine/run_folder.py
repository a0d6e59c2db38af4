"""The run folder (``ckpt_save_dir``): whether a run can use it, the training checkpoints
already in it, clearing what a killed write or a replaced run left behind, and the run's
``config.yaml``."""
import os

from ..config import ConfigError
from ..fileio import TEMP_MARK, WriteError, remove_stale_temporaries, write_text
from ..run_state import read_run_state

__all__ = ["training_checkpoints", "newest_checkpoint", "check_fresh_folder",
           "prepare_run_folder"]


def training_checkpoints(folder):
    """``{path: RunState}`` of the complete training checkpoints of this project in ``folder``
    (temporary files of an interrupted write are not complete checkpoints)."""
    found = {}
    if not os.path.isdir(folder):
        return found
    for name in sorted(os.listdir(folder)):
        if name.endswith(".ckpt") and TEMP_MARK not in name:
            path = os.path.join(folder, name)
            state = read_run_state(path)
            if state is not None:
                found[path] = state
    return found


def newest_checkpoint(folder):
    """The training checkpoint in ``folder`` that is furthest into its run, or None."""
    found = training_checkpoints(folder)
    if not found:
        return None
    return max(found, key=lambda p: (found[p].global_step, os.path.getmtime(p)))


def check_fresh_folder(args):
    """A fresh run must not mix its checkpoints with another run's."""
    found = training_checkpoints(args.ckpt_save_dir)
    if found and not args.overwrite:
        path = max(found, key=lambda p: found[p].global_step)
        raise ConfigError(
            f"ckpt_save_dir '{args.ckpt_save_dir}' holds another run's checkpoints "
            f"({os.path.basename(path)}: epoch {found[path].epoch}): continue it with "
            f"--resume auto, choose another ckpt_save_dir, or pass --overwrite True to "
            f"replace it")


def prepare_run_folder(args, config_yaml):
    """Make the folder and check that it takes files (rank 0, which writes there); remove
    what killed writers left and, with ``--overwrite True``, the run it replaces; write the
    resolved options to ``config.yaml``. Returns the lines to log (the log file itself may
    go, so this runs before logging is set up)."""
    _check_writable(args.ckpt_save_dir)
    notes = _clear_previous_run(args)
    write_text(os.path.join(args.ckpt_save_dir, "config.yaml"), config_yaml)
    return notes


def _check_writable(folder):
    """A file in the folder's place or a read-only mount: one line now, before anything
    compiles, not a traceback when the first file is written."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise ConfigError(f"ckpt_save_dir '{folder}' cannot be made: '{path}' is a file, not a "
                          f"folder; remove it or choose another ckpt_save_dir")
    probe = os.path.join(folder, f".write-check{TEMP_MARK}{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise WriteError(exc.errno, f"ckpt_save_dir '{folder}' cannot be written "
                                    f"({exc.strerror or type(exc).__name__}): choose another "
                                    f"ckpt_save_dir") from None


def _clear_previous_run(args):
    folder = args.ckpt_save_dir
    notes = [f"removed '{name}', left by a write that was cut short"
             for name in remove_stale_temporaries(folder)]
    found = training_checkpoints(folder) if args.overwrite and not args.resume else {}
    if found:
        for path in found:
            os.remove(path)
        for name in ("metrics.jsonl", "train.log"):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                os.remove(path)
        notes.append(f"overwrite: removed the previous run's checkpoints from '{folder}'")
    return notes
