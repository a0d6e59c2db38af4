"""Training, evaluation and checkpoints of the YAML-driven ``train.py`` / ``validate.py``."""
from .checkpoint import CheckpointError, CheckpointKeeper, load_weights, read_checkpoint_meta
from .trainer import build_network, setup_context, train, validate

__all__ = ["CheckpointError", "CheckpointKeeper", "build_network", "load_weights",
           "read_checkpoint_meta", "setup_context", "train", "validate"]
