"""Model-zoo benchmark: parameters, GMACs (counted at 224), graph-mode compile and forward time.

Prints one Markdown row per model: ``python benchmarks/model_zoo.py [--batch 8] [names...]``.
MACs are counted from the conv and dense layers actually run (PyNative forward hooks).
"""
import argparse
import time

import mindspore as ms
import numpy as np
from mindspore import nn

import res2net_ms


def count_macs(net, size):
    macs = []

    def hook(cell, inputs, output):
        if isinstance(cell, nn.Conv2d):
            kh, kw = cell.kernel_size
            macs.append(output.size * cell.in_channels // cell.group * kh * kw)
        elif isinstance(cell, nn.Dense):
            macs.append(output.size * cell.in_channels)

    handles = [c.register_forward_hook(hook) for _, c in net.cells_and_names()
               if isinstance(c, (nn.Conv2d, nn.Dense))]
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net(ms.Tensor(np.zeros((1, 3, size, size), np.float32)))
    for h in handles:
        h.remove()
    return sum(macs)


def time_graph(net, batch, size, repeats=3):
    ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": "O2"})
    x = ms.Tensor(np.random.randn(batch, 3, size, size).astype(np.float32))
    start = time.perf_counter()
    net(x).asnumpy()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        net(x).asnumpy()
    return compile_s, batch * repeats / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("names", nargs="*", default=res2net_ms.list_models())
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    print(f"| model | params | GMACs | compile s | img/s (batch {args.batch}, {args.size}px, "
          f"{ms.get_context('device_target')}) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in args.names:
        net = res2net_ms.create_model(name)
        net.set_train(False)
        params = sum(p.size for p in net.trainable_params())
        gmacs = count_macs(net, args.size) / 1e9
        compile_s, ips = time_graph(net, args.batch, args.size)
        print(f"| {name} | {params:,} | {gmacs:.2f} | {compile_s:.1f} | {ips:.1f} |", flush=True)


if __name__ == "__main__":
    from res2net_ms.process import exit_process

    main()
    exit_process(0)
