"""Model-zoo benchmark: parameters, GMACs (counted at 224), graph-mode compile and forward time.

Prints one Markdown row per model: ``python benchmarks/model_zoo.py [--batch 8] [names...]``.
MACs are counted by ``res2net_ms.summary.count_macs`` (the conv and dense layers that run).
"""
import argparse
import time

import mindspore as ms
import numpy as np

import res2net_ms
from res2net_ms.summary import count_macs


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
        stages, head = count_macs(net, args.size)
        gmacs = (sum(s["macs"] for s in stages) + head) / 1e9
        compile_s, ips = time_graph(net, args.batch, args.size)
        print(f"| {name} | {params:,} | {gmacs:.2f} | {compile_s:.1f} | {ips:.1f} |", flush=True)


if __name__ == "__main__":
    from res2net_ms.process import exit_process

    main()
    exit_process(0)
