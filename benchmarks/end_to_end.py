"""Whole runs side by side: one epoch of training over a folder of JPEG photos, and inference
over a folder, as a user runs them.

``python benchmarks/bench.py --end-to-end [--images 256] [--infer-images 128] [--size 224]
[--batch 16] [--workers 2] [--rounds 1] [--out benchmarks/end_to_end.json]``

The data: an ImageFolder of ``--images`` JPEG photos in 8 classes (crops of the three photos
that scikit-learn and matplotlib ship, a short side of 256 px as ImageNet's, quality 90),
and ``--infer-images`` more in ``val/``. Training, the same for all three: random resized
crop to ``--size`` (scale 0.08-1, ratio 3/4-4/3, bilinear), horizontal flip 0.5, no colour
jitter, normalise; ``--batch`` images a step, SGD with momentum, ``--workers`` data workers.

* **ours**: ``python train.py ...`` (one epoch, no validation) and
  ``python -m res2net_ms.predict FOLDER --ckpt_path ...``, the commands a user types, each
  compiling afresh (``R2N_COMPILE_CACHE=0``) as mindcv does; predict is run once more with the
  graph from the compile cache (a second predict of the same model);
* **mindcv**: its own pipeline and trainer, as its ``train.py`` builds them
  (``create_dataset``, ``create_transforms``, ``create_loader``, ``create_trainer``,
  ``Model.train``);
* **PyTorch**: timm's ``create_dataset`` and ``create_loader`` and a loop over timm's model
  (eager); for inference the same loader in evaluation mode (resize, centre crop 0.875).

Measured for each: **epoch img/s** (the steady rate, the first step left out: it holds the
compile, or PyTorch's warm-up), the epoch's seconds with its first step, the whole command's
wall clock (start-up, imports, compile included), and the data pipeline alone (the same
loader run without a network: img/s and CPU seconds per image; the pipeline takes that
share of the 2 cores from training). Inference: the command's wall clock over the folder and
the steady img/s, from two runs (the folder, and one batch of it: the difference leaves
start-up and compile out). As in ``bench.py``: every worker starts with the shell's
environment from a driver that imports no framework, and no ratio to PyTorch is given when
the machine was not quiet.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

import machine
from machine import (MINDCV_NAMES, TIMM_NAMES, busy, last_line, report, result_of, versions,
                     write_json)

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSES = 8
MODEL = "res2net50_26w_4s"
MODELS = {"ours": MODEL, "mindcv": MINDCV_NAMES[MODEL], "torch": TIMM_NAMES.get(MODEL, MODEL)}
# Goals of issue 21 (images per second, ours / theirs).
GOALS = {"mindcv": 1.15, "torch": 1.0}
# The recipe all three run (train.py's defaults where it has them).
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4
SCALE, RATIO = (0.08, 1.0), (0.75, 1.333)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- the photos
def worker_photos(opts):
    """The ImageFolder: ``train/c<k>/`` (``--images``), ``val/c<k>/`` (``--infer-images``)
    and ``one_batch/`` (the first ``--batch`` of val); and a random-weight checkpoint of our
    network for predict."""
    import matplotlib.cbook
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image("china.jpg"), load_sample_image("flower.jpg"),
              np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")))]
    rng = np.random.default_rng(0)

    def write(split, count):
        paths = []
        for i in range(count):
            label = i % CLASSES
            photo = photos[label % len(photos)]
            h, w = photo.shape[:2]
            side = int(min(h, w) * rng.uniform(0.55, 1.0))
            ch = min(h, int(side * rng.uniform(0.75, 1.0)))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(photo[y:y + ch, x:x + side])
            if label >= len(photos):
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            scale = 256 / min(crop.size)
            crop = crop.resize((round(crop.size[0] * scale), round(crop.size[1] * scale)),
                               Image.Resampling.BICUBIC)
            path = os.path.join(opts.data, split, f"c{label}", f"{split}_{i:05d}.jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            crop.save(path, quality=90)
            paths.append(path)
        return paths

    write("train", opts.images)
    val = write("val", opts.infer_images)
    for path in val[:opts.batch]:
        target = os.path.join(opts.data, "one_batch", *path.split(os.sep)[-2:])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(path, target)

    import mindspore as ms

    from res2net_ms.config import config_to_yaml, parse_args, resolve_model_defaults
    from res2net_ms.factory import create_model
    from res2net_ms.run_state import RunState, save_training_checkpoint

    ms.set_seed(0)
    net = create_model(MODELS["ours"], num_classes=CLASSES, **_layers(opts))
    config = resolve_model_defaults(parse_args(["--model", MODELS["ours"], "--num_classes",
                                                str(CLASSES), *_model_kwargs(opts)]))
    save_training_checkpoint(os.path.join(opts.data, "ours.ckpt"), list(net.get_parameters()),
                             RunState(model=MODELS["ours"], config=config_to_yaml(config),
                                      classes=[f"c{k}" for k in range(CLASSES)]))
    return {"train": opts.images, "val": len(val)}


def _layers(opts):
    """``{"layers": [...]}`` with ``--layers`` (every implementation builds the same smaller
    network of the model's design), else nothing."""
    return {"layers": list(opts.layers)} if opts.layers else {}


def _model_kwargs(opts):
    """train.py's option for ``--layers``."""
    return ["--model_kwargs", f"{{layers: {list(opts.layers)}}}"] if opts.layers else []


# --------------------------------------------------------------------------- training
def _train_flags(opts, save_dir):
    """train.py's options for the common recipe."""
    return ["--data_dir", opts.data, "--model", MODELS["ours"], "--num_classes", str(CLASSES),
            "--batch_size", str(opts.batch), "--image_resize", str(opts.size),
            "--num_parallel_workers", str(opts.workers), "--epoch_size", "1",
            "--interpolation", "bilinear", "--scale", *map(str, SCALE), "--ratio",
            *map(str, RATIO), "--hflip", "0.5", "--opt", "momentum", "--lr", str(LR),
            "--scheduler", "constant", "--warmup_epochs", "0", "--momentum", str(MOMENTUM),
            "--weight_decay", str(WEIGHT_DECAY), "--val_while_train", "False",
            "--ckpt_save_dir", save_dir, "--progress_bar", "off", "--log_interval", "100000",
            "--overwrite", "True", "--distribute", "False", *_model_kwargs(opts)]


def _steady(times, batch):
    """Images per second between the first step's end and the last step's end."""
    return (len(times) - 1) * batch / (times[-1] - times[0]) if len(times) > 1 else None


def worker_mindcv_train(opts):
    """mindcv's train.py, pared to what runs each step: its dataset, transforms, loader,
    network, loss, optimizer and ``Model.train``."""
    import mindspore as ms
    from mindcv.data import create_dataset, create_loader, create_transforms
    from mindcv.loss import create_loss
    from mindcv.optim import create_optimizer
    from mindcv.utils import create_trainer

    ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": "O2"})
    ms.set_seed(0)
    loader = _mindcv_loader(opts, create_dataset, create_transforms, create_loader)
    network = _mindcv_network(opts)
    optimizer = create_optimizer(network, opt="momentum", lr=LR, momentum=MOMENTUM,
                                 weight_decay=WEIGHT_DECAY)
    model = create_trainer(network, create_loss(name="CE"), optimizer, metrics=None,
                           amp_level="O0", amp_cast_list=None, loss_scale_type="fixed")
    times = []

    class StepTimes(ms.train.Callback):
        def on_train_step_end(self, run_context):
            times.append(time.perf_counter())

    start = time.perf_counter()
    model.train(1, loader, callbacks=[StepTimes()], dataset_sink_mode=False)
    return {"steps": len(times), "epoch_seconds": time.perf_counter() - start,
            "images_per_s": _steady(times, opts.batch)}


def _mindcv_network(opts):
    """mindcv's model, or with ``--layers`` its ``Res2Net`` class with those stages (its
    factories fix the layer counts)."""
    import mindcv
    from mindcv.models.res2net import Bottle2neck, Res2Net

    if not opts.layers:
        return mindcv.create_model(MODELS["mindcv"], num_classes=CLASSES)
    return Res2Net(Bottle2neck, list(opts.layers), num_classes=CLASSES)  # MODEL is v1


def _mindcv_loader(opts, create_dataset, create_transforms, create_loader):
    dataset = create_dataset(name="", root=opts.data, split="train", shuffle=True,
                             num_parallel_workers=opts.workers)
    transforms = create_transforms("", image_resize=opts.size, is_training=True, scale=SCALE,
                                   ratio=RATIO, hflip=0.5, color_jitter=None,
                                   interpolation="bilinear", mean=[255 * m for m in MEAN],
                                   std=[255 * s for s in STD])
    return create_loader(dataset, batch_size=opts.batch, drop_remainder=True, is_training=True,
                         num_classes=CLASSES, transform=transforms,
                         num_parallel_workers=opts.workers)


def _timm_loader(opts, is_training, folder):
    import torch
    from timm.data import create_dataset, create_loader

    if is_training:
        dataset = create_dataset("", root=opts.data, split="train", is_training=True)
    else:
        dataset = create_dataset("", root=folder, split="", is_training=False)
    return create_loader(dataset, input_size=(3, opts.size, opts.size), batch_size=opts.batch,
                         is_training=is_training, use_prefetcher=False, scale=SCALE, ratio=RATIO,
                         hflip=0.5, color_jitter=0.0, interpolation="bilinear", mean=MEAN,
                         std=STD, crop_pct=0.875, num_workers=opts.workers,
                         persistent_workers=False, device=torch.device("cpu"))


def worker_torch_train(opts):
    """A PyTorch training loop built from timm's pieces."""
    import timm
    import torch

    torch.manual_seed(0)
    loader = _timm_loader(opts, True, None)
    model = timm.create_model(MODELS["torch"], num_classes=CLASSES, **_layers(opts)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    loss_fn = torch.nn.CrossEntropyLoss()
    times, start = [], time.perf_counter()
    for images, labels in loader:
        if len(images) < opts.batch:  # drop_remainder, as the others
            break
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        loss.item()
        times.append(time.perf_counter())
    return {"steps": len(times), "epoch_seconds": time.perf_counter() - start,
            "images_per_s": _steady(times, opts.batch), "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- pipelines alone
def _cpu():
    """CPU seconds of this process (all its threads) and of its finished children."""
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def _drain(batches, batch):
    """Run a pipeline to its end: its steady rate, and its CPU seconds (any process)."""
    times, images, cpu = [], 0, _cpu()
    for _ in batches:
        images += batch
        times.append(time.perf_counter())
    return {"images": images, "images_per_s": _steady(times, batch),
            "cpu_seconds": _cpu() - cpu}


def worker_ours_loader(opts):
    """Our training pipeline, as train.py builds it, without a network."""
    from res2net_ms.config import parse_args
    from res2net_ms.data import TrainData, check_imagefolder
    from res2net_ms.engine.settings import resolve_settings

    args = parse_args(_train_flags(opts, tempfile.mkdtemp()))
    resolve_settings(args)
    scan = check_imagefolder(args.data_dir, args.num_classes, splits=("train",))
    return _drain(TrainData(args, scan["samples"]["train"]).batches(0), opts.batch)


def worker_mindcv_loader(opts):
    from mindcv.data import create_dataset, create_loader, create_transforms

    loader = _mindcv_loader(opts, create_dataset, create_transforms, create_loader)
    return _drain(loader.create_tuple_iterator(num_epochs=1), opts.batch)


def worker_torch_loader(opts):
    return _drain(iter(_timm_loader(opts, True, None)), opts.batch)


# --------------------------------------------------------------------------- inference
def worker_torch_predict(opts):
    """Top-5 of every image of the folder with timm's evaluation pipeline (the script a
    PyTorch user would write)."""
    import timm
    import torch

    model = timm.create_model(MODELS["torch"], num_classes=CLASSES, **_layers(opts)).eval()
    rows = 0
    with torch.inference_mode():
        for images, _ in _timm_loader(opts, False, opts.folder):
            top = torch.softmax(model(images), dim=1).topk(5)
            rows += len(top.indices)
    return {"images": rows, "threads": torch.get_num_threads()}


WORKERS = {"photos": worker_photos, "mindcv_train": worker_mindcv_train,
           "torch_train": worker_torch_train, "ours_loader": worker_ours_loader,
           "mindcv_loader": worker_mindcv_loader, "torch_loader": worker_torch_loader,
           "torch_predict": worker_torch_predict}


# --------------------------------------------------------------------------- driver
def _worker(kind, opts, folder=None, env=None):
    cmd = [sys.executable, os.path.join(HERE, "bench.py"), "--end-to-end", "--worker", kind,
           "--data", opts.data, "--images", str(opts.images), "--infer-images",
           str(opts.infer_images), "--size", str(opts.size), "--batch", str(opts.batch),
           "--workers", str(opts.workers)] + (["--folder", folder] if folder else []) + (
               ["--layers", *map(str, opts.layers)] if opts.layers else [])
    return result_of(*machine.run(cmd, opts.timeout, env=env))


def _ours_train(opts):
    """``python train.py``: its epoch record, and the command's wall clock."""
    save_dir = tempfile.mkdtemp(prefix="e2e-ours-")
    try:
        proc, info = machine.run([sys.executable, "train.py", *_train_flags(opts, save_dir)],
                                 opts.timeout, env={"R2N_COMPILE_CACHE": "0"})
        if proc.returncode:
            return {"error": f"train.py exit {proc.returncode}: {last_line(proc)}",
                    "machine": info}
        with open(os.path.join(save_dir, "metrics.jsonl"), encoding="utf-8") as f:
            record = json.loads(f.readline())
        return {"images_per_s": record["train_images_per_s"],
                "epoch_seconds": record["train_seconds"], "machine": info}
    finally:
        shutil.rmtree(save_dir, ignore_errors=True)


def _ours_predict(opts, folder, cache_dir=None):
    cmd = [sys.executable, "-m", "res2net_ms.predict", folder, "--model", MODELS["ours"],
           "--ckpt_path", os.path.join(opts.data, "ours.ckpt"), "--batch-size",
           str(opts.batch), "--format", "csv"]
    env = {"R2N_CACHE_DIR": cache_dir} if cache_dir else {"R2N_COMPILE_CACHE": "0"}
    proc, info = machine.run(cmd, opts.timeout, env=env)
    if proc.returncode:
        return {"error": f"predict exit {proc.returncode}: {last_line(proc)}", "machine": info}
    return {"images": len(proc.stdout.splitlines()) // 5, "machine": info}


def _inference_round(opts, results):
    """Each inference command over the folder and over one batch of it."""
    folder, one = os.path.join(opts.data, "val"), os.path.join(opts.data, "one_batch")
    cache_dir = tempfile.mkdtemp(prefix="e2e-cache-")
    try:
        runs = {"ours_predict": lambda f: _ours_predict(opts, f),
                "ours_predict_cached": lambda f: _ours_predict(opts, f, cache_dir),
                "torch_predict": lambda f: _worker("torch_predict", opts, f)}
        _ours_predict(opts, one, cache_dir)  # fills the cache: the graph is the same for both
        for name, call in runs.items():
            pair = {"folder": call(folder), "one_batch": call(one)}
            results.setdefault(name, []).append(pair)
            _say(name, pair["folder"])
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def _say(name, result):
    info = result.get("machine", {})
    share = info.get("others_share")
    text = result.get("error") or ", ".join(
        f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
        for k, v in result.items() if k not in ("machine",))
    print(f"  {name}: {text}; wall {info.get('seconds', 0):.1f} s"
          + (f" (others used {share:.0%} of the CPUs)" if share is not None else ""), flush=True)


def _median(results, key, sub=None):
    values = [(r[sub] if sub else r).get(key) for r in results]
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def _wall(results, sub=None):
    values = [(r[sub] if sub else r).get("machine", {}).get("seconds") for r in results]
    values = [v for v in values if v]
    return statistics.median(values) if values else None


def summarize(results, opts):
    """Medians per implementation: training, pipeline alone, inference."""
    out = {}
    for impl in ("ours", "mindcv", "torch"):
        train, loader = results.get(f"{impl}_train", []), results.get(f"{impl}_loader", [])
        cpu = [r["cpu_seconds"] / r["images"] for r in loader if r.get("images")]
        out[impl] = {"images_per_s": _median(train, "images_per_s"),
                     "epoch_seconds": _median(train, "epoch_seconds"),
                     "command_seconds": _wall(train),
                     "loader_images_per_s": _median(loader, "images_per_s"),
                     "loader_cpu_s_per_image": statistics.median(cpu) if cpu else None,
                     "errors": [r["error"] for r in train + loader if "error" in r]}
    for name in ("ours_predict", "ours_predict_cached", "torch_predict"):
        runs = results.get(name, [])
        folder, one = _wall(runs, "folder"), _wall(runs, "one_batch")
        steady = ((opts.infer_images - opts.batch) / (folder - one)
                  if folder and one and folder > one else None)
        out[name] = {"command_seconds": folder, "one_batch_seconds": one,
                     "images_per_s": steady,
                     "errors": [p[k]["error"] for p in runs for k in p if "error" in p[k]]}
    return out


def _fmt(value, unit="", digits=1):
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def tables(summary, opts, not_quiet):
    """The two Markdown tables, and the ratios (none to PyTorch from a busy machine)."""
    names = {"ours": "res2net_ms: `train.py`", "mindcv": "mindcv: its pipeline + `Model.train`",
             "torch": "PyTorch: timm's `create_loader` + loop"}
    lines = [f"Training, one epoch of {opts.images} photos at {opts.size} px, batch "
             f"{opts.batch}, {opts.workers} data workers:", "",
             "| | epoch img/s (steady) | epoch s (first step incl.) | command s (launch to "
             "exit) | pipeline alone img/s | pipeline CPU s/img |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for impl, label in names.items():
        s = summary[impl]
        lines.append(f"| {label} | {_fmt(s['images_per_s'], '', 2)} | "
                     f"{_fmt(s['epoch_seconds'])} | {_fmt(s['command_seconds'])} | "
                     f"{_fmt(s['loader_images_per_s'])} | "
                     f"{_fmt(s['loader_cpu_s_per_image'], '', 3)} |")
    lines += _ratio_lines(summary, "images_per_s", not_quiet, ("ours", "mindcv", "torch"))
    lines += ["", f"Inference over a folder of {opts.infer_images} photos (batch {opts.batch}):",
              "", "| | img/s (steady) | command s, whole folder | command s, one batch |",
              "| --- | ---: | ---: | ---: |"]
    labels = {"ours_predict": "res2net_ms: `python -m res2net_ms.predict`",
              "ours_predict_cached": "res2net_ms: the same, graph from the compile cache",
              "torch_predict": "PyTorch: timm's loader (eval) + model"}
    for name, label in labels.items():
        s = summary[name]
        lines.append(f"| {label} | {_fmt(s['images_per_s'], '', 2)} | "
                     f"{_fmt(s['command_seconds'])} | {_fmt(s['one_batch_seconds'])} |")
    lines += _ratio_lines(summary, "images_per_s", not_quiet,
                          ("ours_predict", None, "torch_predict"))
    return "\n".join(lines)


def _ratio_lines(summary, key, not_quiet, names):
    ours, mindcv, torch = names
    lines = []
    for peer, name in (("mindcv", mindcv), ("torch", torch)):
        if name is None:
            continue
        label = "PyTorch" if peer == "torch" else "mindcv"
        if peer == "torch" and not_quiet:
            lines.append(f"| ours / {label} | not given: the machine was busy ({not_quiet}) |")
            continue
        a, b = summary[ours][key], summary[name][key]
        if a and b:
            goal = GOALS[peer]
            lines.append(f"| ours / {label} (img/s) | {a / b:.2f}× "
                         f"({'met' if a / b >= goal else 'missed'}: ≥ {goal}) |")
    return lines


def parser():
    p = argparse.ArgumentParser(prog="bench.py --end-to-end",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256, help="training photos (one epoch)")
    p.add_argument("--infer-images", type=int, default=128, help="photos to predict")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="data workers, the same for all")
    p.add_argument("--layers", type=int, nargs=4, metavar="N",
                   help="blocks per stage (default: the model's): the same smaller network "
                        "in every implementation, for a quick check of the benchmark itself")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--timeout", type=int, default=3600, help="seconds per command")
    machine.add_matmul_arguments(p)
    p.add_argument("--data", help="the photo folder (default: a temporary one)")
    p.add_argument("--out", default=os.path.join(HERE, "end_to_end.json"))
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    opts = parser().parse_args(argv)
    if opts.worker:
        report(WORKERS[opts.worker](opts))
        return 0
    box = machine.machine()
    print(f"end to end: {opts.images} training + {opts.infer_images} inference photos, "
          f"{opts.size} px, batch {opts.batch}, {opts.workers} workers, {opts.rounds} round(s)"
          + (f", blocks per stage {list(opts.layers)}" if opts.layers else ""))
    print(f"machine: {box['cpu']}, {box['cores']} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in box['load_average'])}")
    rates = {}
    machine.rates_at("start", opts, rates)
    own_data = opts.data is None
    opts.data = opts.data or tempfile.mkdtemp(prefix="e2e-photos-")
    start = time.perf_counter()
    try:
        photos = _worker("photos", opts)
        if "error" in photos:
            raise SystemExit(f"cannot write the photos: {photos['error']}")
        results = {}
        for r in range(opts.rounds):
            print(f"round {r + 1}", flush=True)
            for name, call in (("ours_train", lambda: _ours_train(opts)),
                               ("mindcv_train", lambda: _worker("mindcv_train", opts)),
                               ("torch_train", lambda: _worker("torch_train", opts)),
                               ("ours_loader", lambda: _worker("ours_loader", opts)),
                               ("mindcv_loader", lambda: _worker("mindcv_loader", opts)),
                               ("torch_loader", lambda: _worker("torch_loader", opts))):
                results.setdefault(name, []).append(call())
                _say(name, results[name][-1])
            _inference_round(opts, results)
    finally:
        if own_data:
            shutil.rmtree(opts.data, ignore_errors=True)
    machine.rates_at("end", opts, rates)
    runs = [r["machine"] for name, rs in results.items() for r in rs
            if name.startswith(("ours_train", "torch_train")) and "machine" in r]
    runs += [p[k]["machine"] for name in ("ours_predict", "torch_predict")
             for p in results.get(name, []) for k in p if "machine" in p[k]]
    not_quiet = busy(box["load_average"][0], runs)
    summary = summarize(results, opts)
    print()
    print(tables(summary, opts, not_quiet))
    print(f"\n{time.perf_counter() - start:.0f} s; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          + (f"not quiet: {not_quiet}" if not_quiet else "quiet throughout"))
    write_json(opts.out, {"options": {k: v for k, v in vars(opts).items()
                                      if k not in ("worker", "folder")},
                          "versions": versions(), "machine": box, "quiet": not_quiet is None,
                          "not_quiet": not_quiet, "matmul": rates, "photos": photos,
                          "results": results, "summary": summary})
    return 0
