"""Training-step time of our Res2Net against mindcv's (same step cell, graph mode O2).

``python benchmarks/train_step.py [--batch 32] [--size 32]``: prints seconds per step for
``res2net50_26w_4s`` (ours) and mindcv's ``res2net50``, which compute the same network.
"""
import argparse
import time

import mindspore as ms
import numpy as np
from mindspore import nn

import res2net_ms


def seconds_per_step(net, batch, size, steps):
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    step = nn.TrainOneStepCell(nn.WithLossCell(net, loss),
                               nn.Momentum(net.trainable_params(), 0.01, 0.9))
    step.set_train()
    x = ms.Tensor(np.random.randn(batch, 3, size, size).astype(np.float32))
    y = ms.Tensor(np.random.randint(0, 10, batch).astype(np.int32))
    step(x, y).asnumpy()  # compile
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y).asnumpy()
    return (time.perf_counter() - start) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": "O2"})
    import mindcv

    for label, net in (("res2net_ms res2net50_26w_4s", res2net_ms.create_model(
            "res2net50_26w_4s", num_classes=10)),
                       ("mindcv res2net50", mindcv.create_model("res2net50", num_classes=10))):
        s = seconds_per_step(net, args.batch, args.size, args.steps)
        print(f"{label}: {s:.3f} s/step ({args.batch / s:.1f} img/s, batch {args.batch}, "
              f"{args.size}px)", flush=True)


if __name__ == "__main__":
    from res2net_ms.process import exit_process

    main()
    exit_process(0)
