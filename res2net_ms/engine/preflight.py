"""Every check of a run's input that needs nothing built, so that a mistake in the data
folder, a checkpoint or the run folder stops the run with one line before the first graph
compiles (the settings are resolved before: :mod:`.settings`)."""
from dataclasses import dataclass

from ..data import DataError, check_imagefolder
from ..models import get_model_config
from ..run_state import CheckpointError, RunState, check_resume
from ..weights import weights_source
from .run_folder import check_fresh_folder

__all__ = ["Plan", "check_inputs"]


@dataclass
class Plan:
    """What the checks found: the data folder's scan, the weights to start from (or to
    evaluate) and the state of the run to resume."""

    data: dict
    weights: str = None
    resumed: RunState = None


def check_inputs(args, for_training=True):
    """The data folder, the batch size, the checkpoint to resume (or the weights to start
    from, and a run folder free of another run) or the weights to evaluate."""
    if for_training:
        splits = (args.train_split,) + ((args.val_split,) if args.val_while_train else ())
    else:
        splits = (args.val_split,)
    plan = Plan(check_imagefolder(args.data_dir, args.num_classes, splits=splits))
    if not for_training:
        plan.weights = weights_source(args.ckpt_path, args.pretrained, args.model)
        if plan.weights is None:
            raise CheckpointError("nothing to evaluate: pass --ckpt_path (or --pretrained True)")
        return plan
    images = plan.data["counts"][args.train_split]
    if args.num_samples:
        images = min(images, args.num_samples)
    if args.drop_remainder and images < args.batch_size:
        raise DataError(f"{images} training images are fewer than batch_size "
                        f"{args.batch_size} with drop_remainder: no training step; lower "
                        f"batch_size")
    if args.resume:
        plan.resumed = check_resume(args.resume, get_model_config(args.model).name)
    else:
        plan.weights = weights_source(args.ckpt_path, args.pretrained, args.model)
        check_fresh_folder(args)
    return plan
