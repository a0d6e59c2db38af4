"""Seconds per image of the five Res2Net detectors at 800x1333: ours against mmdetection 3.3.0,
at batch 1 and batch 4.

``python benchmarks/detect_bench.py [--detectors faster_rcnn_r2_101_fpn ...] [--runs 2]
[--batch-sizes 1 4] [--out benchmarks/detect_bench.json]``

This driver imports neither framework: each implementation runs in a subprocess of its own,
started with the environment of the shell (importing MindSpore sets ``OMP_NUM_THREADS=1`` in
its process, which would hold PyTorch to one thread in any child). Per detector the mmdetection
worker builds the full-size detector, gives it random weights that make every head work
(``tests/mmdet_reference.randomise``, measured on a small copy of the photos) and saves them as
an mmdetection checkpoint; our worker reads that checkpoint. Both then run photos resized to
exactly 800x1333 (scikit-learn's, cropped to 3:5): the first call (ours: graph compilation),
then ``--runs`` timed calls of each batch size, four different photos per batch of four.
Printed: medians of seconds per image and their ratio, the machine (``machine.py``: CPU, load
average; a ratio is marked busy when the load average was 0.5 or more at the start or other
processes took 10% of the CPUs while a worker ran), and
how many of mmdetection's detections of the first photo ours found (same label, IoU >= 0.99,
score within 1e-3): the full-size check of the parity the tests prove at small sizes.
Needs the test extra and ``tests/requirements-mmdet.txt``.
"""
import argparse
import functools
import os
import statistics
import sys
import tempfile
import time

import machine

REPO = machine.REPO
DETECTORS = ("faster_rcnn_r2_101_fpn", "mask_rcnn_r2_101_fpn", "cascade_rcnn_r2_101_fpn",
             "cascade_mask_rcnn_r2_101_fpn", "htc_r2_101_fpn")


# --------------------------------------------------------------------------- workers
def photos():
    """Four different RGB photos of 384x640 (3:5): resized by both to exactly 800x1333."""
    import numpy as np
    from sklearn.datasets import load_sample_image

    china, flower = load_sample_image("china.jpg"), load_sample_image("flower.jpg")
    crops = [china[:384], china[-384:, ::-1], flower[:384], flower[-384:, ::-1]]
    return [np.ascontiguousarray(c) for c in crops]


def boxes_of(boxes, scores, labels):
    """The first photo's detections, as JSON."""
    return dict(boxes=boxes.tolist(), scores=scores.tolist(), labels=labels.tolist())


def agreement(theirs, ours):
    """Of mmdetection's detections of the first photo, the fraction we found with the same
    label, IoU >= 0.99 and a score within 1e-3 (at full size, a check of the benchmark's own)."""
    import numpy as np

    ref, mine = (np.asarray(d["boxes"], np.float64).reshape(-1, 4) for d in (theirs, ours))
    if len(ref) == 0:
        return 1.0
    if len(mine) == 0:
        return 0.0
    lt = np.maximum(ref[:, None, :2], mine[None, :, :2])
    rb = np.minimum(ref[:, None, 2:], mine[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda b: np.prod(b[:, 2:] - b[:, :2], axis=1)  # noqa: E731
    iou = inter / np.maximum(area(ref)[:, None] + area(mine)[None] - inter, 1e-12)
    iou *= np.asarray(theirs["labels"])[:, None] == np.asarray(ours["labels"])[None]
    best = iou.argmax(axis=1)
    close = np.abs(np.asarray(ours["scores"])[best] - np.asarray(theirs["scores"])) <= 1e-3
    return float(np.mean((iou.max(axis=1) >= 0.99) & close))


def measure(predict, images, opts):
    """{batch size: {first, per_image (one per run)}} for a ``predict(list of images)``."""
    out = {}
    for size in opts.batch_sizes:
        batch = images[:size]
        first, *times = machine.timed(lambda: predict(batch), 1 + opts.runs)
        out[str(size)] = dict(first=first, per_image=[t / size for t in times])
    return out


@functools.lru_cache(maxsize=None)
def reference():
    """``tests/mmdet_reference`` with mmdetection imported (PyTorch given every core)."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import mmdet_reference

    if mmdet_reference.import_mmdet() is None:
        raise SystemExit("mmdetection is not installed: pip install --no-deps -r "
                         "tests/requirements-mmdet.txt")
    return mmdet_reference


def randomised_reference(cfg, detector, image, weights):
    """mmdetection's detector of ``cfg`` with random weights that make every head work
    (measured on a small copy of ``image``), saved as the checkpoint ``weights`` that our
    worker reads."""
    import torch

    from res2net_ms.det import coco_classes, get_detector_config

    mmdet_reference = reference()
    model = mmdet_reference.build_detector(cfg)
    small = mmdet_reference.detector_config(get_detector_config(detector).mmdet_config,
                                            scale=(320, 192))
    mmdet_reference.randomise(model, mmdet_reference.pipeline_inputs(small, image))
    torch.save({"meta": {"dataset_meta": {"classes": coco_classes()}},
                "state_dict": model.state_dict()}, weights)
    return model


def worker_mmdet(opts):
    import torch

    from res2net_ms.det import get_detector_config

    mmdet_reference = reference()
    images = photos()
    cfg = mmdet_reference.detector_config(get_detector_config(opts.detector).mmdet_config)
    model = randomised_reference(cfg, opts.detector, images[0], opts.weights)

    def predict(batch):
        inputs = [mmdet_reference.pipeline_inputs(cfg, image) for image in batch]
        data = {"inputs": [i["inputs"][0] for i in inputs],
                "data_samples": [i["data_samples"][0] for i in inputs]}
        with torch.no_grad():
            return model.test_step(data)

    found = predict(images[:1])[0].pred_instances
    return dict(times=measure(predict, images, opts), detections=boxes_of(
        found.bboxes.numpy(), found.scores.numpy(), found.labels.numpy()),
                threads=torch.get_num_threads(), version=f"PyTorch {torch.__version__}")


def worker_ours(opts):
    import mindspore as ms

    from res2net_ms.det import create_detector

    images = photos()
    detector = create_detector(opts.detector, checkpoint_path=opts.weights)

    def predict(batch):
        return detector.predict(batch, batch_size=len(batch))

    found = predict(images[:1])[0]
    return dict(times=measure(predict, images, opts),
                detections=boxes_of(found.boxes, found.scores, found.labels),
                version=f"MindSpore {ms.__version__}")


# --------------------------------------------------------------------------- driver
def parser(doc, detectors, out):
    """The options of a detection benchmark (``--detectors`` from ``detectors``, the JSON
    report ``out``), with the hidden ones of its workers."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--detectors", nargs="+", default=detectors, choices=detectors)
    p.add_argument("--timeout", type=int, default=3600, help="seconds per worker")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", out))
    p.add_argument("--worker", choices=("mmdet", "ours"), help=argparse.SUPPRESS)
    p.add_argument("--detector", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    return p


def start_report():
    """The report's machine and date, the machine printed; and the load average now."""
    report = dict(machine=machine.machine(), date=time.strftime("%Y-%m-%d %H:%M"),
                  detectors={})
    load_at_start = report["machine"]["load_average"][0]
    print(f"{report['machine']['cpu']}, {report['machine']['cores']} cores; load average "
          f"{load_at_start:.2f}")
    return report, load_at_start


def compare(script, options, opts, report):
    """Per detector of ``opts``, the mmdetection worker of ``script`` (which saves the
    weights) then ours on those weights, each in a process of its own with the worker options
    ``options``: yields ``(detector, mmdet, ours)``, their results, also kept in ``report``."""
    with tempfile.TemporaryDirectory() as tmp:
        for detector in opts.detectors:
            cmd = [sys.executable, script, "--detector", detector, "--weights",
                   os.path.join(tmp, f"{detector}.pth"), *options, "--worker"]
            mmdet = machine.result_of(*machine.run(cmd + ["mmdet"], opts.timeout))
            ours = machine.result_of(*machine.run(cmd + ["ours"], opts.timeout)) \
                if "error" not in mmdet else dict(error="skipped: no weights")
            report["detectors"][detector] = dict(mmdet=mmdet, ours=ours)
            yield detector, mmdet, ours


def finish(report, load_at_start, lines, out):
    """Print the table ``lines``, with why the machine was not quiet (if it was not), and
    write the report."""
    why = machine.busy(load_at_start, [w["machine"] for d in report["detectors"].values()
                                       for w in d.values() if "machine" in w])
    report["not_quiet"] = why
    lines = lines + ["" if why is None else f"\n(busy) the machine was not quiet: {why}"]
    print("\n".join([""] + lines))
    machine.write_json(out, report)


def exit_with(code):
    """Exit; a MindSpore worker without MindSpore's exit noise."""
    if "--worker" in sys.argv and "mindspore" in sys.modules:
        from res2net_ms.process import exit_process

        exit_process(code)
    sys.exit(code)


def row(detector, mmdet, ours, size, load_at_start):
    if "error" in mmdet or "error" in ours:
        return f"| {detector} | b{size} | {mmdet.get('error') or ours.get('error')} |"
    theirs = statistics.median(mmdet["times"][size]["per_image"])
    mine = statistics.median(ours["times"][size]["per_image"])
    busy = machine.busy(load_at_start, [mmdet["machine"], ours["machine"]])
    ratio = f"{mine / theirs:.2f}" + (" (busy)" if busy else "")
    same = agreement(mmdet["detections"], ours["detections"])
    count = len(mmdet["detections"]["boxes"])
    return (f"| {detector} | {size} | {theirs:.2f} | {mine:.2f} | {ratio} | "
            f"{ours['times'][size]['first']:.1f} | {same:.0%} of {count} |")


def main(argv=None):
    p = parser(__doc__, DETECTORS, "detect_bench.json")
    p.add_argument("--runs", type=int, default=2, help="timed calls per batch size")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=(1, 4))
    opts = p.parse_args(argv)
    if opts.worker:
        machine.report((worker_mmdet if opts.worker == "mmdet" else worker_ours)(opts))
        return 0
    report, load_at_start = start_report()
    lines = ["| detector | batch | mmdetection s/image | ours s/image | ours / mmdetection | "
             "ours first call (s) | same boxes |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    options = ["--runs", str(opts.runs), "--batch-sizes", *map(str, opts.batch_sizes)]
    for detector, mmdet, ours in compare(os.path.abspath(__file__), options, opts, report):
        for size in map(str, opts.batch_sizes):
            lines.append(row(detector, mmdet, ours, size, load_at_start))
            print(lines[-1], flush=True)
    finish(report, load_at_start, lines, opts.out)
    return 0


if __name__ == "__main__":
    exit_with(main())
