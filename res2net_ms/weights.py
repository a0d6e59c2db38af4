"""Weights into a built network, for fine-tuning or evaluation.

Any file the converter reads: a training checkpoint of this project (its EMA weights when
asked), a converted ``.ckpt``, PyTorch, safetensors or mindcv files; or the official weights
through :mod:`res2net_ms.hub`. Beside :mod:`res2net_ms.factory`, which builds networks, as
timm's ``load_checkpoint`` beside its builder.
"""
import os

from .convert import load_into
from .hub import WeightsError, pretrained_path
from .run_state import CheckpointError, read_run_state

__all__ = ["CheckpointError", "load_weights", "pretrained_file", "weights_source"]


def load_weights(network, path, model_name, use_ema=False):
    """Load ``path`` into ``network``; return the lines that say what was loaded.

    A classifier whose size differs from the checkpoint's is re-initialised (fine-tuning to
    another ``num_classes``), and the lines say so.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    state = read_run_state(path)
    if use_ema and not (state and state.has_ema):
        raise CheckpointError(f"'{path}' has no EMA weights (not a training checkpoint made "
                              f"with --ema True): evaluate it with --ema False")
    try:
        report = load_into(network, path, model_name=model_name, use_ema=use_ema)
    except ValueError as exc:
        raise CheckpointError(" ".join(str(exc).split())) from None
    if state is not None:
        source = (f"{'EMA weights' if use_ema else 'weights'} of epoch {state.epoch} "
                  f"from training checkpoint '{path}'")
    else:
        source = f"weights from '{path}' ({report.layout} layout)"
    return [f"loaded {source}"] + report.notes


def weights_source(ckpt_path, pretrained, model_name):
    """The file to start from: ``ckpt_path`` (which must exist), else with ``pretrained`` the
    official weights of ``model_name`` (downloaded now), else None."""
    if ckpt_path:
        if not os.path.isfile(ckpt_path):
            raise CheckpointError(f"ckpt_path '{ckpt_path}' does not exist")
        return ckpt_path
    return pretrained_file(model_name) if pretrained else None


def pretrained_file(model_name, cache_dir=None):
    """The official weights of ``model_name``, converted and cached by :mod:`res2net_ms.hub`."""
    try:
        return pretrained_path(model_name, cache_dir)
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from None
