"""Restarts in seconds: what the compile cache (``res2net_ms/compile_cache.py``) saves a user,
measured on the commands themselves.

``python benchmarks/restarts.py [--model res2net50_26w_4s] [--size 224] [--batch 16]
[--images 96] [--out benchmarks/restarts.json]``

On a folder of photos (``end_to_end.py``'s) and an empty compile cache of its own:

1. ``train.py`` from scratch, killed (SIGKILL) once it has written a step checkpoint; then
   ``train.py --resume auto`` with the cache (the graph of the killed run), and once more with
   the cache off (``R2N_COMPILE_CACHE=0``): seconds from launch to the end of the first
   training step (its progress line), and the step graph's compile or load seconds (the
   cache's log line);
2. ``validate.py`` of that checkpoint twice: the evaluation graph's compile seconds, then its
   load seconds, and each command's wall clock.

The goals of issue 21: a resume reaches its first step in under a third of a fresh start's
time, and a second ``validate.py`` compiles in under 3 s.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import machine

HERE = os.path.dirname(os.path.abspath(__file__))
STEP_LINE = re.compile(r"epoch \d+/\d+ step \d+/\d+")
CACHE_LINE = re.compile(r"compile cache: (training step|evaluation) (compiled|loaded) in "
                        r"([\d.]+) s")


def _command(cmd, env, stop=None, timeout=3600):
    """Run ``cmd`` with the shell's environment (and ``env``), reading its output as it
    comes: the seconds from launch to the first progress line and to the cache's lines; with
    ``stop(line_count, save_dir)`` true, the process is killed (SIGKILL) there."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=machine.REPO, env={**machine.SHELL_ENV, **env})
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    found, lines = {"killed": False}, []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            now = time.perf_counter() - start
            if STEP_LINE.search(line) and "first_step" not in found:
                found["first_step"] = now
            if m := CACHE_LINE.search(line):
                found[f"{m[1]} {m[2]}"] = float(m[3])
            if stop is not None and stop(found):
                proc.send_signal(signal.SIGKILL)
                found["killed"] = True
                break
        proc.wait()
    finally:
        timer.cancel()
    found["seconds"] = time.perf_counter() - start
    found["returncode"] = proc.returncode
    found["tail"] = lines[-3:]
    return found


def _train(opts, data, save_dir, extra=(), env=None, stop=None):
    import end_to_end

    flags = end_to_end._train_flags(opts, save_dir)
    flags[flags.index("--overwrite") + 1] = "False"
    flags[flags.index("--log_interval") + 1] = "1"
    return _command([sys.executable, "train.py", *flags, "--ckpt_save_steps", "2",
                     "--model", opts.model, *extra], env or {}, stop)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="res2net50_26w_4s")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--images", type=int, default=96, help="training photos")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--out", default=os.path.join(HERE, "restarts.json"))
    opts = p.parse_args(argv)
    opts.infer_images = opts.batch * 2
    box = machine.machine()
    print(f"restarts: {opts.model}, {opts.size} px, batch {opts.batch}; machine: {box['cpu']}, "
          f"{box['cores']} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in box['load_average'])}")
    rates = machine.matmul_rates()
    print("reachable fp32: " + machine.describe_rates(rates))
    work = tempfile.mkdtemp(prefix="restarts-")
    opts.data, cache = os.path.join(work, "photos"), os.path.join(work, "cache")
    on = {"R2N_CACHE_DIR": cache}
    try:
        import end_to_end

        photos = end_to_end._worker("photos", opts)
        if "error" in photos:
            raise SystemExit(f"cannot write the photos: {photos['error']}")
        save_dir = os.path.join(work, "run")
        checkpoint = os.path.join(save_dir, "last.ckpt")
        runs = {"fresh": _train(opts, opts.data, save_dir, env=on,
                                stop=lambda f: os.path.exists(checkpoint))}
        kept = os.path.join(work, "kept.ckpt")
        shutil.copyfile(checkpoint, kept)
        for name, env in (("resume, cache", on), ("resume, cache off",
                                                  {"R2N_COMPILE_CACHE": "0"})):
            shutil.copyfile(kept, checkpoint)  # each resume starts from the killed run's step
            runs[name] = _train(opts, opts.data, save_dir, ["--resume", "auto"], env,
                                stop=lambda f: "first_step" in f)
        for name in ("validate, first", "validate, second"):
            runs[name] = _command([sys.executable, "validate.py", "--ckpt_path", kept,
                                   "--data_dir", opts.data, "--batch_size", str(opts.batch)],
                                  on)
        for name, run in runs.items():
            print(f"  {name}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else
                                            f"{k} {v}" for k, v in run.items() if k != "tail"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fresh, resumed = runs["fresh"].get("first_step"), runs["resume, cache"].get("first_step")
    cold = runs["resume, cache off"].get("first_step")
    second = runs["validate, second"].get("evaluation loaded")
    lines = ["", "| | launch to first step | step graph | command |", "| --- | ---: | ---: | ---: |"]
    for name in ("fresh", "resume, cache off", "resume, cache"):
        r = runs[name]
        graph = r.get("training step compiled") or r.get("training step loaded")
        lines.append(f"| train.py {name} | {r.get('first_step', float('nan')):.1f} s | "
                     + (f"{graph:.1f} s" if graph else "compiled, not logged") + " | |")
    for name in ("validate, first", "validate, second"):
        r = runs[name]
        graph = r.get("evaluation compiled") or r.get("evaluation loaded")
        lines.append(f"| {name.replace(', ', '.py, ')} | | "
                     + (f"{graph:.1f} s" if graph else "–") + f" | {r['seconds']:.1f} s |")
    if fresh and resumed:
        lines.append(f"\nresume / fresh start, launch to first step: {resumed / fresh:.2f} "
                     f"({'met' if resumed < fresh / 3 else 'missed'}: < 1/3)" +
                     (f"; without the cache {cold / fresh:.2f}" if cold else ""))
    if second is not None:
        lines.append(f"second validate.py, evaluation graph: {second:.1f} s "
                     f"({'met' if second < 3 else 'missed'}: < 3 s)")
    not_quiet = machine.busy(box["load_average"][0], [])
    lines.append(f"not quiet: {not_quiet}" if not_quiet else "quiet at the start")
    print("\n".join(lines))
    machine.write_json(opts.out, {"options": vars(opts), "versions": machine.versions(),
                                  "machine": box, "matmul": rates,
                                  "load_average_end": list(os.getloadavg()),
                                  "quiet": not_quiet is None, "not_quiet": not_quiet,
                                  "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
