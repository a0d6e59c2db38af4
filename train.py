"""Train a Res2Net: ``python train.py --config configs/demo/digits_cpu.yaml [--flag value ...]``."""
from res2net_ms.engine.cli import exit_process, train_main

if __name__ == "__main__":
    exit_process(train_main())
