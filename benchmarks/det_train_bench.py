"""Seconds per training iteration of Faster and Mask R-CNN, ours against mmdetection 3.3.0.

R2-101-FPN, batch 2 at 800x1333: ``python benchmarks/det_train_bench.py [--detectors
faster_rcnn_r2_101_fpn ...] [--iters 3] [--scale 800 1333] [--layers 1 1 1 1] [--max-gts 4]
[--out benchmarks/det_train_bench.json]``

Built as ``detect_bench.py`` (whose driver and reference set-up it uses): this driver imports
neither framework, each implementation runs in a process of its own started with the shell's
environment, and the mmdetection worker gives the detector random weights that make every head
work and saves them as the checkpoint our worker reads. An iteration is a whole training step
on two different photos (detect_bench's china and flower, resized to ``--scale``: exactly
800x1333 by default) with four ground-truth boxes each (ellipse masks for Mask R-CNN): resize
and collate, losses, gradients and an SGD update (lr 0.0025, momentum 0.9, weight decay 1e-4),
in training mode with mmdetection's default ``train_cfg`` (random samplers, a new draw each
iteration), frozen stem and stage 1, and RoIAlign sampling ratio 2 on both sides (our training
graph takes a fixed count). mmdetection: its own ``loss()``, ``backward()`` and
``torch.optim.SGD``; ours: ``TrainStep``, ``--max-gts`` ground-truth slots per image (default
the four boxes each photo holds, as ``train.py`` pads to the most boxes an image of its set
holds; a COCO run pads to about 100, which costs memory in the anchor IoUs). The first
iteration (ours: graph compilation) is timed on its own, then ``--iters`` more. Printed:
medians of seconds per iteration, their ratio (marked busy as detect_bench's), both first
iterations and both peak RSS; the losses of every iteration are in the JSON. Needs the test
extra and ``tests/requirements-mmdet.txt``.
"""
import itertools
import os
import statistics

import detect_bench
import machine

DETECTORS = ("faster_rcnn_r2_101_fpn", "mask_rcnn_r2_101_fpn")
LR, MOMENTUM, WEIGHT_DECAY = 0.0025, 0.9, 1e-4
SAMPLING_RATIO = 2
# Every photo's ground truth: x1, y1, x2, y2 as fractions of its width and height, label.
BOXES = ((0.05, 0.10, 0.40, 0.65, 0), (0.45, 0.15, 0.90, 0.55, 2),
         (0.25, 0.55, 0.65, 0.95, 15), (0.70, 0.60, 0.95, 0.90, 56))


# --------------------------------------------------------------------------- workers
def batch():
    """Two different photos (3:5) and their ground truth, masks included."""
    import numpy as np

    images = detect_bench.photos()[::2]
    targets = []
    for image in images:
        height, width = image.shape[:2]
        boxes = np.float32([box[:4] for box in BOXES]) * np.float32([width, height] * 2)
        ys, xs = np.mgrid[:height, :width] + 0.5
        centres, radii = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2
        masks = (((xs - centres[:, 0, None, None]) / radii[:, 0, None, None]) ** 2
                 + ((ys - centres[:, 1, None, None]) / radii[:, 1, None, None]) ** 2) < 1
        targets.append(dict(boxes=boxes, labels=np.int64([box[4] for box in BOXES]),
                            masks=masks))
    return images, targets


def without_masks(targets, with_mask):
    """The targets of a detector without a mask head: no masks to resize and collate."""
    return targets if with_mask else [{k: v for k, v in t.items() if k != "masks"}
                                      for t in targets]


def measure(iteration, opts):
    """The first iteration's seconds and those of ``--iters`` more, each one's losses (with
    their total, as each framework sums them) and the peak RSS."""
    losses = []
    first, *times = machine.timed(lambda: losses.append(iteration()), 1 + opts.iters)
    return dict(first=first, per_iter=times, losses=losses, peak_rss=machine.peak_rss())


def worker_mmdet(opts):
    import torch

    from res2net_ms.det import get_detector_config

    mmdet_reference = detect_bench.reference()
    images, targets = batch()
    scale = tuple(opts.scale[::-1])
    cfg = mmdet_reference.train_config(get_detector_config(opts.detector).mmdet_config,
                                       opts.layers, scale, sampler=None,
                                       sampling_ratio=SAMPLING_RATIO)
    model = detect_bench.randomised_reference(cfg, opts.detector, images[0], opts.weights)
    targets = without_masks(targets, model.with_mask)
    torch.manual_seed(0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR,
                                momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def iteration():
        losses, _ = mmdet_reference.loss_and_grads(
            model, mmdet_reference.train_inputs(images, targets, scale))
        optimizer.step()
        return dict(losses, total=sum(v for k, v in losses.items() if "loss" in k))

    return dict(**measure(iteration, opts), threads=torch.get_num_threads(),
                version=f"PyTorch {torch.__version__}")


def worker_ours(opts):
    import mindspore as ms

    from res2net_ms.det import create_detector
    from res2net_ms.det.train_step import TrainStep, check_overflow

    ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": "O2"})
    images, targets = batch()
    detector = create_detector(
        opts.detector, checkpoint_path=opts.weights, scale=tuple(opts.scale[::-1]),
        backbone_kwargs=dict(layers=tuple(opts.layers)) if opts.layers else None,
        train_cfg={"static": {"max_gts": opts.max_gts}}, roi_sampling_ratio=SAMPLING_RATIO)
    targets = without_masks(targets, detector.with_mask)
    cell = detector.loss_cell()
    step = TrainStep(cell, ms.nn.SGD(detector.trainable_params(), learning_rate=LR,
                                     momentum=MOMENTUM, weight_decay=WEIGHT_DECAY))
    draws = itertools.count(0, len(images))

    def iteration():
        first = next(draws)
        total, losses, overflow, _ = step(*cell.inputs(images, targets,
                                                    range(first, first + len(images))))
        check_overflow(overflow, cell)
        return dict(zip(cell.names, (float(x.asnumpy()) for x in losses)),
                    total=float(total.asnumpy()))

    return dict(**measure(iteration, opts), version=f"MindSpore {ms.__version__}")


# --------------------------------------------------------------------------- driver
def row(detector, mmdet, ours, load_at_start):
    if "error" in mmdet or "error" in ours:
        return f"| {detector} | {mmdet.get('error') or ours.get('error')} |"
    theirs, mine = (statistics.median(r["per_iter"]) for r in (mmdet, ours))
    busy = machine.busy(load_at_start, [mmdet["machine"], ours["machine"]])
    ratio = f"{mine / theirs:.2f}" + (" (busy)" if busy else "")
    return (f"| {detector} | {theirs:.2f} | {mine:.2f} | {ratio} | {mmdet['first']:.1f} | "
            f"{ours['first']:.1f} | {mmdet['peak_rss'] / 2**30:.1f} / "
            f"{ours['peak_rss'] / 2**30:.1f} |")


def main(argv=None):
    p = detect_bench.parser(__doc__, DETECTORS, "det_train_bench.json")
    p.add_argument("--iters", type=int, default=3, help="timed iterations after the first")
    p.add_argument("--scale", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"),
                   help="the keep-ratio resize target")
    p.add_argument("--layers", type=int, nargs=4, help="blocks per stage of a reduced backbone")
    p.add_argument("--max-gts", type=int, default=len(BOXES),
                   help="our ground-truth slots per image")
    opts = p.parse_args(argv)
    if opts.worker:
        machine.report((worker_mmdet if opts.worker == "mmdet" else worker_ours)(opts))
        return 0
    report, load_at_start = detect_bench.start_report()
    report["settings"] = dict(iters=opts.iters, scale=opts.scale, layers=opts.layers,
                              max_gts=opts.max_gts, batch=2, lr=LR)
    lines = ["| detector | mmdetection s/iter | ours s/iter | ours / mmdetection | "
             "mmdetection first (s) | ours first (s) | peak RSS mmdetection / ours (GiB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    options = ["--iters", str(opts.iters), "--scale", *map(str, opts.scale), "--max-gts",
               str(opts.max_gts)] + (["--layers", *map(str, opts.layers)] if opts.layers else [])
    for detector, mmdet, ours in detect_bench.compare(os.path.abspath(__file__), options, opts,
                                                      report):
        lines.append(row(detector, mmdet, ours, load_at_start))
        print(lines[-1], flush=True)
    detect_bench.finish(report, load_at_start, lines, opts.out)
    return 0


if __name__ == "__main__":
    detect_bench.exit_with(main())
