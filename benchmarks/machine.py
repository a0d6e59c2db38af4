"""What the benchmarks record about the machine, and the rules that keep their figures honest.

* Every implementation runs in a process of its own, started with the environment the user's
  shell gave the driver (:data:`SHELL_ENV`), by a driver that has imported neither framework
  (:func:`run` refuses otherwise): importing MindSpore sets ``OMP_NUM_THREADS=1`` in its
  process's C environment, which ``os.environ`` does not show and every child inherits
  (PyTorch then runs on one thread: a training step 4.2 s instead of 2.4 s here), and puts
  its own library folder in ``LD_LIBRARY_PATH``.
* The reachable fp32 MatMul rate of each framework, each in a process of its own
  (:func:`matmul_rates`).
* The CPU model and the load average (:func:`machine`), and for each worker the share of the
  CPUs that other processes took while it ran (``/proc/stat`` less the worker's own CPU time).
  PyTorch's OpenMP threads collapse when another process runs on the cores (its training step
  went from 2.2 s to 17 s once here), so a ratio to PyTorch measured on a busy machine flatters
  us: :func:`busy` says why the machine was not quiet, and the tables then give no such ratio.
* What every driver shares: the peers' names of our networks, the timing loop
  (:func:`timed`), the peak memory (:func:`peak_rss`), the package versions and the JSON
  report (:func:`write_json`).

``python benchmarks/machine.py`` prints the machine, both MatMul rates and whether it is quiet.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULT = "BENCH_RESULT "


def shell_environment(pid="self"):
    """The environment this process (or process ``pid``) started with: the user's shell's.
    Read from ``/proc/<pid>/environ`` where there is one, because ``os.environ`` is not it in a process
    that imported MindSpore: that adds ``LD_LIBRARY_PATH`` (its own library folder),
    ``KMP_DUPLICATE_LIB_OK``, ``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python`` and
    ``HCCL_CONNECT_TIMEOUT`` to it (and ``OMP_NUM_THREADS=1`` to the C environment alone)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            entries = [e for e in f.read().split(b"\0") if b"=" in e]
    except OSError:
        return dict(os.environ)
    return dict(os.fsdecode(e).split("=", 1) for e in entries)


SHELL_ENV = shell_environment()
# Quiet: a 1-minute load average below this before the first worker ...
QUIET_LOAD = 0.5
# ... and other processes took less than this share of the CPUs while each worker ran.
QUIET_SHARE = 0.10
FRAMEWORKS = ("mindspore", "torch")
# Our zoo name -> the same network in mindcv (timm uses our names, or these aliases).
MINDCV_NAMES = {"res2net50_26w_4s": "res2net50", "res2net101_26w_4s": "res2net101",
                "res2net152_26w_4s": "res2net152", "res2net50_v1b_26w_4s": "res2net50_v1b",
                "res2net101_v1b_26w_4s": "res2net101_v1b",
                "res2net152_v1b_26w_4s": "res2net152_v1b"}
TIMM_NAMES = {"res2net50_v1b_26w_4s": "res2net50d", "res2net101_v1b_26w_4s": "res2net101d"}


def _cpu_seconds():
    """Busy CPU seconds of the whole machine since boot (all cores), or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields[:8]) - fields[3] - fields[4]  # everything but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _children_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cmd, timeout, cwd=REPO, env=None):
    """Run ``cmd`` to its end with the shell's environment (and the variables ``env``);
    returns ``(process, info)``: ``info`` has the wall seconds, the worker's CPU seconds, the
    load average before, and ``others_share``, the share of the machine's CPU time that other
    processes used meanwhile (None off Linux)."""
    imported = [name for name in FRAMEWORKS if name in sys.modules]
    if imported:
        raise RuntimeError(f"the benchmark driver imported {', '.join(imported)}: its children "
                           f"would inherit what that did to the process's environment")
    info = {"load_before": os.getloadavg()[0]}
    busy, own, start = _cpu_seconds(), _children_seconds(), time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd,
                              env={**SHELL_ENV, **(env or {})}, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc = subprocess.CompletedProcess(cmd, -9, "", f"timed out after {timeout} s")
    info["seconds"] = time.perf_counter() - start
    info["cpu_seconds"] = _children_seconds() - own  # the worker's, its children's included
    info["others_share"] = None
    if busy is not None:
        others = (_cpu_seconds() - busy) - info["cpu_seconds"]
        info["others_share"] = max(0.0, others) / (info["seconds"] * (os.cpu_count() or 1))
    return proc, info


def last_line(proc):
    """What a failed process said last (its error, as a rule): one line of at most 300
    characters."""
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return tail[0][:300]


def result_of(proc, info=None):
    """The worker's result dict (its ``BENCH_RESULT`` line), or ``{"error": ...}``; with the
    machine's state while it ran (``info`` of :func:`run`) under ``"machine"``."""
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            result = json.loads(line[len(RESULT):])
            break
    else:
        result = {"error": f"exit {proc.returncode}: {last_line(proc)}"}
    if info is not None:
        result["machine"] = info
    return result


def report(result):
    """What a worker prints for its driver: one ``BENCH_RESULT`` line."""
    print(RESULT + json.dumps(result), flush=True)


def timed(fn, calls):
    """The seconds of each of ``calls`` calls of ``fn``."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def peak_rss():
    """This process's peak resident memory so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def versions():
    """The versions of the frameworks and libraries compared (None: not installed), read
    without importing them."""
    found = {}
    for pkg in ("mindspore", "mindcv", "torch", "timm", "numpy"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = None
    return found


def write_json(path, result):
    """Write a driver's report; called once every worker has run: importing the package
    imports MindSpore."""
    from res2net_ms.fileio import write_text

    write_text(path, json.dumps(result, indent=1))
    print(f"wrote {path}")


def machine():
    """CPU model, cores, system, Python and the load average now."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.platform(),
            "python": platform.python_version(), "load_average": list(os.getloadavg())}


def busy(load_at_start, runs):
    """Why the machine was not quiet for these worker runs (``info`` dicts of :func:`run`),
    or None when it was."""
    if load_at_start >= QUIET_LOAD:
        return f"load average {load_at_start:.2f} at the start (quiet: below {QUIET_LOAD})"
    shares = [r["others_share"] for r in runs if r.get("others_share") is not None]
    if len(shares) < len(runs):
        return "the CPU time of other processes could not be measured here"
    if shares and max(shares) >= QUIET_SHARE:
        return (f"other processes took up to {max(shares):.0%} of the CPUs while a worker "
                f"ran (quiet: below {QUIET_SHARE:.0%})")
    return None


# --------------------------------------------------------------------------- MatMul workers
def _matmul_mindspore(n):
    import mindspore as ms
    import numpy as np
    from mindspore import ops

    a = ms.Tensor(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    ops.matmul(a, a).asnumpy()
    return _best_rate(lambda: ops.matmul(a, a).asnumpy(), n), {}


def _matmul_torch(n):
    import torch

    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    torch.matmul(a, a)
    return _best_rate(lambda: torch.matmul(a, a), n), {"threads": torch.get_num_threads()}


def _best_rate(call, n, repeats=5):
    return 2 * n ** 3 / min(timed(call, repeats)) / 1e9


MATMUL = {"mindspore": _matmul_mindspore, "torch": _matmul_torch}


def matmul_rates(n=4096, timeout=600):
    """The reachable fp32 GFLOP/s of an n x n MatMul: MindSpore's and PyTorch's, each in a
    process of its own; ``{"mindspore": ..., "torch": ..., "torch_threads": ...}`` (None
    where it failed, with the reason under ``<name>_error``)."""
    rates = {"n": n}
    for kind in MATMUL:
        proc, _ = run([sys.executable, os.path.abspath(__file__), "--matmul", kind,
                       "--size", str(n)], timeout)
        result = result_of(proc)
        rates[kind] = result.get("gflops")
        if "error" in result:
            rates[f"{kind}_error"] = result["error"]
        if "threads" in result:
            rates[f"{kind}_threads"] = result["threads"]
    return rates


def add_matmul_arguments(parser):
    """The MatMul options of the benchmark drivers: its size, and when the rates are taken."""
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--matmul-at", choices=("start,end", "start", "none"),
                        default="start,end", help="when to measure the MatMul rates")


def rates_at(moment, opts, rates):
    """The MatMul rates at ``moment`` ("start" or "end") into ``rates``, printed, unless
    ``--matmul-at`` leaves that moment out."""
    if moment in opts.matmul_at.split(","):
        rates[moment] = matmul_rates(opts.matmul_size)
        print(f"reachable fp32 at the {moment}: " + describe_rates(rates[moment]))


def describe_rates(rates):
    """One line: both MatMul rates."""
    def rate(kind):
        value = rates.get(kind)
        return f"{value:.0f}" if value else f"failed ({rates.get(kind + '_error', '?')})"
    threads = rates.get("torch_threads")
    return (f"MatMul {rates['n']}² fp32: MindSpore {rate('mindspore')} GFLOP/s, PyTorch "
            f"{rate('torch')} GFLOP/s" + (f" ({threads} threads)" if threads else ""))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--matmul", choices=sorted(MATMUL), help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.matmul:
        gflops, extra = MATMUL[opts.matmul](opts.size)
        report({"gflops": gflops, **extra})
        return 0
    box = machine()
    print(f"machine: {box['cpu']}, {box['cores']} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in box['load_average'])}")
    proc, info = run([sys.executable, "-c", "import time; time.sleep(5)"], 60)
    print(describe_rates(matmul_rates(opts.size)))
    why = busy(box["load_average"][0], [info])
    print(f"busy: {why}" if why else "quiet: figures from now on may be compared with PyTorch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
