"""Every ``auto`` or null setting of a run resolved, in one step before the checks."""
import mindspore as ms

from ..config import resolve_model_defaults
from .run_folder import newest_checkpoint

__all__ = ["resolve_settings"]


def resolve_settings(args, for_training=True):
    """Give every ``auto`` or null option its value: the model's input defaults, the device
    (the one MindSpore runs on), AMP (O0 on CPU and for detectors, O2 elsewhere) and, for
    training, where the run starts (``--resume auto``, mindcv's ``ckpt_path`` +
    ``resume_opt``). Returns the lines to log, with the mindcv settings that cannot apply
    here."""
    notes = _ignored_settings(args) + (_resolve_resume(args) if for_training else [])
    if args.device_target == "auto":
        args.device_target = ms.get_context("device_target")
    if args.amp_level == "auto":
        args.amp_level = "O0" if args.device_target == "CPU" or args.detector else "O2"
    resolve_model_defaults(args)
    return notes


def _ignored_settings(args):
    """mindcv settings that cannot apply here: warn once, go on."""
    notes = []
    if args.dataset_download:
        notes.append("warning: dataset_download is ignored (no download here): the data is "
                     f"read from data_dir '{args.data_dir}'")
    if args.aux_factor:
        notes.append(f"warning: aux_factor {args.aux_factor} is ignored: {args.model} has no "
                     "auxiliary head")
    return notes


def _resolve_resume(args):
    """``--resume auto`` becomes the newest complete checkpoint of ``ckpt_save_dir`` (or a
    fresh start); mindcv's ``ckpt_path`` + ``resume_opt`` becomes ``--resume ckpt_path``."""
    if args.resume_opt and args.ckpt_path and not args.resume:
        args.resume, args.ckpt_path = args.ckpt_path, ""
        return [f"resume_opt: continuing the training checkpoint '{args.resume}'"]
    if args.resume != "auto":
        return []
    args.resume = newest_checkpoint(args.ckpt_save_dir) or ""
    if not args.resume:
        return [f"resume auto: no checkpoint in '{args.ckpt_save_dir}', starting afresh"]
    return [f"resume auto: continuing from '{args.resume}'"]
