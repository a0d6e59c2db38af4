"""Training, evaluation and checkpoints of the YAML-driven ``train.py`` / ``validate.py``."""
from .checkpoint import CheckpointError, CheckpointKeeper, load_weights, read_checkpoint_meta
from .cli import parse_run_args
from .setup import build_network, setup_context
from .trainer import train, validate

__all__ = ["CheckpointError", "CheckpointKeeper", "build_network", "load_weights",
           "parse_run_args", "read_checkpoint_meta", "setup_context", "train", "validate"]
