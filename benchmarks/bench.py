"""Speed and memory of res2net_ms against mindcv and PyTorch on this machine, in one run.

``python benchmarks/bench.py [--model res2net50_26w_4s] [--batch 16] [--size 224]
[--precision fp32] [--rounds 3] [--out benchmarks/bench.json]``

``--compile-profile`` instead splits the first step's graph compilation of ours and mindcv into
MindSpore's compiler phases and passes (``benchmarks/compile_profile.json``);
``--end-to-end`` runs whole trainings and inferences over a folder of photos
(``benchmarks/end_to_end.py``).

This driver imports neither framework, and every implementation runs in a subprocess of its
own started with the shell's environment (``benchmarks/machine.py``: importing MindSpore would
hold PyTorch to one thread in every child). The subprocesses take turns over ``--rounds``
rounds, so a busy spell of a shared machine slows all of them; compare the ratios of one run.
Each subprocess measures

* **first step**: the first training step, graph compilation included (PyTorch: eager
  warm-up); ours compiles afresh here (``R2N_COMPILE_CACHE=0``), as mindcv does;
* **train**: seconds per training step (forward, loss, backward, optimizer update);
* **infer**: seconds per inference batch;
* **peak RSS**: the process's peak resident memory once training has run.

What runs: ours is the step ``train.py`` runs (``engine.train_step.build_train_step`` ->
``TrainStep``, the default recipe options) and infers with BN folded into the convs
(``fuse_bn``, as predict and export do); mindcv is its ``res2net50`` family under the step its
``train.py`` builds (``mindcv.utils.create_trainer``); PyTorch is timm's model, eager, with SGD.
MindSpore's and PyTorch's MatMul (each in its own process) give the machine's reachable
GFLOP/s. The machine's load and the CPU time other processes took during each worker are
recorded; when the machine was not quiet the table gives no ratio to PyTorch, and says why.
"""
import argparse
import ctypes
import json
import os
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.util import find_spec

import machine
from machine import (MINDCV_NAMES, TIMM_NAMES, busy, describe_rates, matmul_rates, report,
                     result_of, timed, versions, write_json)

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = {"train": ("torch", 0.9), "infer": ("torch", 0.7), "first": ("mindcv", 0.8),
           "rss": ("torch", 1.0)}
AMP = {"fp32": "O0", "fp16": "O2"}
# What a PyTorch worker reports of its environment: what importing MindSpore would change.
ENVIRONMENT = ("OMP_NUM_THREADS", "LD_LIBRARY_PATH", "KMP_DUPLICATE_LIB_OK",
               "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION")
# Our first step is measured compiling, as mindcv's: the compile cache stays out of it.
WORKER_ENV = {"ours": {"R2N_COMPILE_CACHE": "0"}, "compile_ours": {"R2N_COMPILE_CACHE": "0"}}


# --------------------------------------------------------------------------- workers
def _inputs(batch, size, num_classes, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, 3, size, size), dtype=np.float32),
            rng.integers(0, num_classes, batch).astype(np.int32))


def _measure(train_call, infer_call, opts):
    """The common protocol: first step, warm-up, timed steps, peak RSS, then inference."""
    first, _, *train = timed(train_call, 2 + opts.steps)
    rss = machine.peak_rss()
    infer_first, _, *infer = timed(infer_call, 2 + opts.infer_steps)
    return {"first": first, "train": train, "rss": rss, "infer_first": infer_first,
            "infer": infer}


def _recipe_args(opts):
    """train.py's options with their defaults, for this model, batch, size and precision."""
    from res2net_ms.config import parse_args, resolve_model_defaults

    args = parse_args(["--model", opts.model, "--batch_size", str(opts.batch),
                       "--image_resize", str(opts.size), "--num_classes", str(opts.num_classes),
                       "--amp_level", AMP[opts.precision]])
    return resolve_model_defaults(args)


def _ours_step(opts):
    """The step train.py runs, built as train.py builds it, and a batch for it."""
    import mindspore as ms

    from res2net_ms.engine.network import create_network
    from res2net_ms.engine.setup import setup_context
    from res2net_ms.engine.train_step import build_train_step

    args = _recipe_args(opts)
    setup_context(args)
    ms.set_seed(0)
    parts = build_train_step(args, create_network(args), steps_per_epoch=1000, group_size=1)
    images, labels = (ms.Tensor(a) for a in _inputs(opts.batch, opts.size, opts.num_classes))
    return parts, images, labels


def worker_ours(opts):
    from res2net_ms.factory import create_model
    from res2net_ms.models.fuse import fuse_bn

    parts, images, labels = _ours_step(opts)
    net = create_model(opts.model, num_classes=opts.num_classes)
    net.set_train(False)
    fuse_bn(net)
    return _measure(lambda: parts.step(images, labels)[0].asnumpy(),
                    lambda: net(images).asnumpy(), opts)


def _mindcv_step(opts):
    """The cell mindcv's ``Model.train`` runs every step, built as its train.py builds it."""
    import mindcv
    import mindspore as ms
    from mindcv.loss import create_loss
    from mindcv.optim import create_optimizer
    from mindcv.utils import create_trainer

    args = _recipe_args(opts)
    ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": args.jit_level})
    ms.set_seed(0)
    network = mindcv.create_model(MINDCV_NAMES[opts.model], num_classes=opts.num_classes)
    loss = create_loss(name=args.loss, label_smoothing=args.label_smoothing)
    optimizer = create_optimizer(network, opt=args.opt, lr=args.lr,
                                 weight_decay=args.weight_decay, momentum=args.momentum,
                                 nesterov=args.use_nesterov,
                                 weight_decay_filter=args.weight_decay_filter)
    model = create_trainer(network, loss, optimizer, metrics={}, amp_level=args.amp_level,
                           amp_cast_list=None, loss_scale_type=args.loss_scale_type,
                           loss_scale=args.loss_scale)
    train_step = model._train_network
    train_step.set_train(True)
    images, labels = (ms.Tensor(a) for a in _inputs(opts.batch, opts.size, opts.num_classes))
    return train_step, images, labels


def worker_mindcv(opts):
    import mindcv

    train_step, images, labels = _mindcv_step(opts)
    infer_net = mindcv.create_model(MINDCV_NAMES[opts.model], num_classes=opts.num_classes)
    infer_net.set_train(False)
    return _measure(lambda: train_step(images, labels).asnumpy(),
                    lambda: infer_net(images).asnumpy(), opts)


def _profile_compiles():
    """Turn MindSpore's compile profile on (read when the first cell is built)."""
    from mindspore._extends.parse import compile_config

    compile_config.COMPILE_PROFILE = "1"


def _profiled_compile(step, images, labels):
    """Compile ``step``: the wall time, and the seconds of each compiler phase and pass that
    MindSpore's compile profile prints (captured from file descriptor 1)."""
    with tempfile.TemporaryFile(mode="w+") as log:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            start = time.perf_counter()
            step.compile(images, labels)
            seconds = time.perf_counter() - start
        finally:
            sys.stdout.flush()
            ctypes.CDLL(None).fflush(None)  # the profile is printed with C's buffered stdio
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        return {"compile": seconds, **parse_compile_profile(log.read())}


def parse_compile_profile(text):
    """MindSpore's compile profile: top-level ``phases``, the seconds of each pass of the
    optimizer's ``opt_a`` summed over its cycles (``passes``) and how often each substitution
    ran (``counts``, a gauge of the graph's size)."""
    phases, passes, counts, parent = {}, {}, {}, None
    for line in text.splitlines():
        if m := re.match(r"^TotalTime = ([\d.e-]+)", line):
            phases["total"] = float(m[1])
        elif m := re.match(r"^( *)\[([^\]]+)\]: ([\d.e-]+)", line):
            depth, name, seconds = len(m[1]) // 4, m[2], float(m[3])
            if depth == 0:
                phases[name] = seconds
            elif depth == 1:
                parent = name
            elif depth == 3 and parent == "opt_a":
                passes[name] = passes.get(name, 0.0) + seconds
        elif m := re.match(r"^ *[\d.]+% : +[\d.e-]+s : +(\d+): (\S+)$", line):
            counts[m[2]] = int(m[1])
    return {"phases": phases, "passes": passes, "counts": counts}


def worker_compile_ours(opts):
    _profile_compiles()
    parts, images, labels = _ours_step(opts)
    return _profiled_compile(parts.train_step, images, labels)


def worker_compile_mindcv(opts):
    _profile_compiles()
    return _profiled_compile(*_mindcv_step(opts))


def worker_torch(opts):
    import timm
    import torch

    name = TIMM_NAMES.get(opts.model, opts.model)
    if not timm.is_model(name):
        return {"error": f"timm has no {name}"}
    args = argparse.Namespace(**json.loads(opts.recipe))  # train.py's, from the MindSpore side
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=opts.num_classes)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, nesterov=args.use_nesterov)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    images, labels = (torch.from_numpy(a) for a in _inputs(opts.batch, opts.size,
                                                           opts.num_classes))
    labels = labels.long()
    autocast = torch.autocast("cpu", dtype=torch.float16, enabled=opts.precision == "fp16")

    def train_call():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model(images).float(), labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    infer_model = timm.create_model(name, num_classes=opts.num_classes).eval()

    def infer_call():
        with torch.inference_mode(), autocast:
            return infer_model(images).float().numpy()

    return {**_measure(train_call, infer_call, opts), "threads": torch.get_num_threads(),
            "environment": {k: os.environ.get(k) for k in ENVIRONMENT}}


def worker_recipe(opts):
    """What the other workers share, from the MindSpore side: the model's forward MACs per
    image, train.py's optimizer and loss settings (for the PyTorch worker, which must not
    import MindSpore) and the slow-MindSpore warning if it applies."""
    from res2net_ms.factory import create_model
    from res2net_ms.process import warn_slow_mindspore
    from res2net_ms.summary import count_macs

    net = create_model(opts.model, num_classes=opts.num_classes)
    net.set_train(False)
    stages, head = count_macs(net, opts.size)
    args = _recipe_args(opts)
    return {"macs_per_image": sum(s["macs"] for s in stages) + head,
            "recipe": {k: getattr(args, k) for k in ("lr", "momentum", "weight_decay",
                                                     "use_nesterov", "label_smoothing")},
            "warning": warn_slow_mindspore()}


WORKERS = {"ours": worker_ours, "mindcv": worker_mindcv, "torch": worker_torch,
           "recipe": worker_recipe, "compile_ours": worker_compile_ours,
           "compile_mindcv": worker_compile_mindcv}


# --------------------------------------------------------------------------- driver
def run_worker(kind, opts):
    """One subprocess running worker ``kind``: its result dict (or ``{"error": ...}``) with
    the machine's state while it ran."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--model", opts.model,
           "--batch", str(opts.batch), "--size", str(opts.size), "--precision", opts.precision,
           "--steps", str(opts.steps), "--infer-steps", str(opts.infer_steps),
           "--num-classes", str(opts.num_classes), "--recipe", opts.recipe]
    return result_of(*machine.run(cmd, opts.timeout, env=WORKER_ENV.get(kind)))


def available(opts):
    """The implementations this machine and model allow, and why the others are left out
    (found without importing them: this process stays free of both frameworks)."""
    impls, skipped = ["ours"], {}
    if opts.model in MINDCV_NAMES:
        impls.append("mindcv")
    else:
        skipped["mindcv"] = f"mindcv has no {opts.model}"
    if find_spec("torch") and find_spec("timm"):
        impls.append("torch")
    else:
        skipped["torch"] = "torch/timm not installed"
    return [i for i in impls if i in opts.impls], skipped


def summarize(samples):
    """Median and spread (interquartile range relative to the median) of pooled samples."""
    if not samples:
        return None
    med = statistics.median(samples)
    if len(samples) >= 4:
        q = statistics.quantiles(samples, n=4)
        spread = (q[2] - q[0]) / med
    else:
        spread = (max(samples) - min(samples)) / med
    return {"median": med, "spread": spread, "min": min(samples), "max": max(samples),
            "n": len(samples)}


def collect(rounds):
    """Pool the rounds of every implementation into per-metric summaries."""
    out = {}
    for impl, results in rounds.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            out[impl] = {"error": results[-1]["error"]}
            continue
        out[impl] = {
            "runs": [r["machine"] for r in results if "machine" in r],
            "train": summarize([t for r in ok for t in r["train"]]),
            "infer": summarize([t for r in ok for t in r["infer"]]),
            "first": summarize([r["first"] for r in ok]),
            "infer_first": summarize([r["infer_first"] for r in ok]),
            "rss": summarize([r["rss"] for r in ok]),
            "failed_rounds": len(results) - len(ok),
        }
    return out


def ratios(summary, not_quiet):
    """ours / peer for each metric; none to PyTorch when the machine was not quiet."""
    ours = summary.get("ours", {})
    out = {}
    for peer in ("torch", "mindcv"):
        theirs = summary.get(peer, {})
        if not ours or not theirs or "error" in ours or "error" in theirs:
            continue
        if peer == "torch" and not_quiet:
            out[peer] = {"withheld": not_quiet}
            continue
        out[peer] = {m: ours[m]["median"] / theirs[m]["median"]
                     for m in ("train", "infer", "first", "rss")}
    return out


LABELS = {"ours": "res2net_ms {model}", "mindcv": "mindcv {mindcv} (graph {jit})",
          "torch": "PyTorch eager, timm {timm}"}


def _cell(stat, unit):
    if stat is None:
        return "–"
    if unit == "GB":
        return f"{stat['median'] / 1e9:.2f} GB"
    return f"{stat['median']:.3f} s ±{100 * stat['spread']:.0f}%"


def table(summary, rat, opts, flops):
    names = {"model": opts.model, "mindcv": MINDCV_NAMES.get(opts.model, ""),
             "timm": TIMM_NAMES.get(opts.model, opts.model), "jit": "O2"}
    lines = ["| | train step | inference | first train step | peak RSS | train GFLOP/s "
             "| infer GFLOP/s |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for impl, s in summary.items():
        label = LABELS[impl].format(**names)
        if "error" in s:
            lines.append(f"| {label} | failed: {s['error']} | | | | | |")
            continue
        rates = [f"{flops * 3 / s['train']['median'] / 1e9:.0f}",
                 f"{flops / s['infer']['median'] / 1e9:.0f}"] if flops else ["–", "–"]
        lines.append(f"| {label} | {_cell(s['train'], 's')} | {_cell(s['infer'], 's')} "
                     f"| {_cell(s['first'], 's')} | {_cell(s['rss'], 'GB')} | "
                     + " | ".join(rates) + " |")
    for peer, r in rat.items():
        if "withheld" in r:
            lines.append(f"| ours / PyTorch | not given: the machine was busy ({r['withheld']}) "
                         f"| | | | | |")
            continue
        cells = []
        for m in ("train", "infer", "first", "rss"):
            target = TARGETS[m]
            mark = ""
            if target[0] == peer:
                mark = f" ({'met' if r[m] <= target[1] else 'missed'}: ≤ {target[1]})"
            cells.append(f"{r[m]:.2f}×{mark}")
        lines.append(f"| ours / {'PyTorch' if peer == 'torch' else 'mindcv'} | "
                     + " | ".join(cells) + " | | |")
    return "\n".join(lines)


def compile_profile(opts):
    """Where the first step's compile time goes: ours and mindcv compile at the same time (one
    core each, so a slow spell of the machine slows both), ``--rounds`` times; medians of
    MindSpore's compile profile, phase by phase and for the costliest optimizer passes."""
    rounds = []
    with ThreadPoolExecutor(2) as pool:
        for r in range(opts.rounds):
            ours, theirs = pool.map(lambda kind: run_worker(kind, opts),
                                    ("compile_ours", "compile_mindcv"))
            for name, res in (("ours", ours), ("mindcv", theirs)):
                if "error" in res:
                    raise SystemExit(f"compile profile of {name}: {res['error']}")
            print(f"  round {r + 1}: compile ours {ours['compile']:.2f} s, "
                  f"mindcv {theirs['compile']:.2f} s", flush=True)
            rounds.append((ours, theirs))

    def median(kind, key, i):
        return statistics.median(r[i][kind].get(key, 0.0) if kind else r[i][key]
                                 for r in rounds)

    passes = sorted(rounds[0][0]["passes"], key=lambda k: -median("passes", k, 0))
    rows = [("compile (wall clock)", None, "compile")]
    rows += [(k, "phases", k) for k in ("total", "type_inference", "optimize", "task_emit")]
    rows += [(f"  opt_a {k}", "passes", k) for k in passes][:6]
    lines = [f"compile of the training step, {opts.model} vs mindcv "
             f"{MINDCV_NAMES[opts.model]}, medians of {opts.rounds} concurrent rounds (s)",
             "| phase or pass | ours | mindcv | ours / mindcv |", "| --- | ---: | ---: | ---: |"]
    for label, kind, key in rows:
        a, b = median(kind, key, 0), median(kind, key, 1)
        lines.append(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f}x |" if b else
                     f"| {label} | {a:.2f} | - | - |")
    for key in ("substitution.inline", "opt.transform.opt_a"):
        a, b = (rounds[0][i]["counts"].get(key) for i in (0, 1))
        lines.append(f"| graph size: {key} (count) | {a} | {b} | |")
    print("\n".join(lines))
    return {"rounds": [{"ours": o, "mindcv": m} for o, m in rounds]}


def _print_round(r, impl, result):
    msg = result.get("error") or (
        f"first {result['first']:.2f} s, train {statistics.median(result['train']):.3f} s, "
        f"infer {statistics.median(result['infer']):.3f} s, rss {result['rss'] / 1e9:.2f} GB")
    share = result.get("machine", {}).get("others_share")
    other = f" (others used {share:.0%} of the CPUs)" if share is not None else ""
    print(f"  round {r + 1} {impl}: {msg}{other}", flush=True)


def step_benchmark(opts):
    """The side-by-side table of training and inference steps; the report to write."""
    impls, skipped = available(opts)
    vers, box = versions(), machine.machine()
    print(f"{opts.model}, batch {opts.batch}, {opts.size} px, {opts.precision}, "
          f"{opts.rounds} rounds x ({opts.steps} train + {opts.infer_steps} inference steps)")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v))
    print(f"machine: {box['cpu']}, {box['cores']} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in box['load_average'])}")
    for impl, why in skipped.items():
        print(f"left out: {impl} ({why})")
    start = time.perf_counter()
    rates = {}
    machine.rates_at("start", opts, rates)
    recipe = run_worker("recipe", opts)
    if "error" in recipe:
        raise SystemExit(f"cannot build {opts.model}: {recipe['error']}")
    if recipe.get("warning"):
        print(recipe["warning"])
    opts.recipe = json.dumps(recipe["recipe"])
    rounds = {impl: [] for impl in impls}
    for r in range(opts.rounds):
        for impl in impls[r % len(impls):] + impls[:r % len(impls)]:
            rounds[impl].append(run_worker(impl, opts))
            _print_round(r, impl, rounds[impl][-1])
    machine.rates_at("end", opts, rates)
    summary = collect(rounds)
    not_quiet = busy(box["load_average"][0],
                     [m for i in ("ours", "torch") for m in summary.get(i, {}).get("runs", [])])
    rat = ratios(summary, not_quiet)
    flops = 2 * recipe["macs_per_image"] * opts.batch
    print()
    print(table(summary, rat, opts, flops))
    print(f"\n{time.perf_counter() - start:.0f} s; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          + (f"not quiet: {not_quiet}" if not_quiet else "quiet throughout"))
    return {"options": {k: v for k, v in vars(opts).items() if k != "worker"},
            "versions": vers, "machine": box, "quiet": not_quiet is None,
            "not_quiet": not_quiet, "skipped": skipped, "matmul": rates, "recipe": recipe,
            "rounds": rounds, "summary": summary, "ratios": rat,
            "targets": {m: {"peer": t[0], "max_ratio": t[1]} for m, t in TARGETS.items()}}


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="res2net50_26w_4s")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--precision", choices=sorted(AMP), default="fp32")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=4, help="timed training steps per round")
    p.add_argument("--infer-steps", type=int, default=6, help="timed inference batches per round")
    p.add_argument("--num-classes", type=int, default=1000)
    machine.add_matmul_arguments(p)
    p.add_argument("--impls", default="ours,mindcv,torch",
                   help="comma-separated subset of ours,mindcv,torch")
    p.add_argument("--timeout", type=int, default=900, help="seconds per subprocess")
    p.add_argument("--out", default=os.path.join(HERE, "bench.json"))
    p.add_argument("--compile-profile", action="store_true",
                   help="instead: where the first step's compile time goes, ours vs mindcv")
    p.add_argument("--end-to-end", action="store_true",
                   help="instead: whole runs over a folder of photos (benchmarks/end_to_end.py; "
                        "its own options follow)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--recipe", default="{}", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--end-to-end" in argv:
        import end_to_end

        return end_to_end.main([a for a in argv if a != "--end-to-end"])
    opts = parser().parse_args(argv)
    opts.impls = opts.impls.split(",")
    if opts.worker:
        report(WORKERS[opts.worker](opts))
        return 0
    if opts.compile_profile:
        if opts.model not in MINDCV_NAMES:
            raise SystemExit(f"mindcv has no {opts.model}: nothing to compare the compile with")
        box, rates = machine.machine(), matmul_rates(opts.matmul_size)
        print(f"machine: {box['cpu']}, load average {box['load_average'][0]:.2f}; "
              + describe_rates(rates))
        write_json(opts.out.replace("bench.json", "compile_profile.json"),
                   {"options": vars(opts), "versions": versions(), "machine": box,
                    "matmul": rates, **compile_profile(opts)})
        return 0
    write_json(opts.out, step_benchmark(opts))
    return 0


if __name__ == "__main__":
    code = main()
    if "mindspore" in sys.modules:  # a MindSpore worker: without its exit noise
        from res2net_ms.process import exit_process

        exit_process(code)
    sys.exit(code)
