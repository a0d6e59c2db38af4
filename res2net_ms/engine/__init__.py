"""Training, evaluation and checkpoints of the YAML-driven ``train.py`` / ``validate.py``."""
from ..run_state import CheckpointError, RunState, read_run_state
from ..weights import load_weights
from .cli import parse_run_args
from .keeper import CheckpointKeeper
from .network import build_network
from .setup import seed_everything, setup_context
from .trainer import train, validate

__all__ = ["CheckpointError", "CheckpointKeeper", "RunState", "build_network", "load_weights",
           "parse_run_args", "read_run_state", "seed_everything", "setup_context", "train",
           "validate"]
