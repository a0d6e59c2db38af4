"""Evaluate a checkpoint: ``python validate.py --config ... --ckpt_path ckpt/best.ckpt``."""
from res2net_ms.engine.cli import exit_process, validate_main

if __name__ == "__main__":
    exit_process(validate_main())
