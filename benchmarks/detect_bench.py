"""Seconds per image of Faster R-CNN R2-101-FPN at 800x1333: ours against mmdetection 3.3.0.

``python benchmarks/detect_bench.py [--runs 3]``: one photo (scikit-learn's, cropped to 3:5 so
that it is resized to exactly 800x1333), the same random weights in both (mmdet's detector
randomised as in the parity test, saved as an mmdetection checkpoint and read by ours). Prints
the first call (ours: graph compilation), the medians of ``--runs`` rounds in which the two
alternate (so that both see the same load of a shared machine), their ratio, and where our
time goes. Needs the test extra and ``tests/requirements-mmdet.txt``.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))


def seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(first, second, runs):
    """First calls, then ``runs`` rounds of one call each (so that both see the same load of a
    shared machine): medians and the median of the per-round ratios second / first."""
    warm = (seconds(first), seconds(second))
    rounds = [(seconds(first), seconds(second)) for _ in range(runs)]
    return (warm, statistics.median(a for a, _ in rounds), statistics.median(b for _, b in rounds),
            statistics.median(b / a for a, b in rounds))


def stage_times(detector, image):
    """Seconds of each part of one of our predictions (after compilation)."""
    from res2net_ms.det.preprocess import preprocess

    marks = [("preprocess", time.perf_counter())]
    batch, meta = preprocess(image, detector.scale)
    marks.append(("backbone+FPN+RPN head (graph)", time.perf_counter()))
    feats, scores, deltas = detector.forward_dense(batch)
    marks.append(("proposals (anchors, decode, NMS)", time.perf_counter()))
    boxes, _ = detector.proposals(scores, deltas, meta.img_shape)
    rois = np.concatenate([np.zeros((len(boxes), 1), np.float32), boxes], axis=1)
    marks.append(("RoIAlign (host numpy)", time.perf_counter()))
    roi_feats = detector.roi_head.bbox_roi_extractor(feats, rois)
    marks.append(("box head (graph)", time.perf_counter()))
    detector.roi_head.forward_box_head(roi_feats)
    marks.append(("whole second stage incl. per-class NMS", time.perf_counter()))
    detector.roi_head.predict(feats, boxes, meta.img_shape, meta.scale_factor)
    marks.append(("end", time.perf_counter()))
    return [(name, marks[i + 1][1] - t) for i, (name, t) in enumerate(marks[:-1])]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    import mindspore as ms
    import torch
    from sklearn.datasets import load_sample_image

    import mmdet_reference
    from res2net_ms.det import coco_classes, create_detector

    if mmdet_reference.import_mmdet() is None:
        sys.exit("mmdetection is not installed: pip install --no-deps -r "
                 "tests/requirements-mmdet.txt")
    torch.set_num_threads(os.cpu_count() or 1)
    image = np.ascontiguousarray(load_sample_image("china.jpg")[:384])  # 384x640 -> 800x1333
    cfg = mmdet_reference.faster_rcnn_config()
    model = mmdet_reference.build_detector(cfg)
    batch = mmdet_reference.pipeline_inputs(cfg, image)
    mmdet_reference.randomise(model, batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "faster_rcnn_r2_101_fpn_random.pth")
        torch.save({"meta": {"dataset_meta": {"classes": coco_classes()}},
                    "state_dict": model.state_dict()}, path)
        ours = create_detector("faster_rcnn_r2_101_fpn", checkpoint_path=path)
    print(f"image {image.shape[1]}x{image.shape[0]} -> network input "
          f"{tuple(batch['inputs'][0].shape[1:])} (padded to 32: 800x1344); "
          f"{os.cpu_count()} CPU threads", flush=True)

    def reference():
        with torch.no_grad():
            return model.test_step(mmdet_reference.pipeline_inputs(cfg, image))

    (ref_first, our_first), ref_median, our_median, ratio = alternate(
        reference, lambda: ours.predict(image), args.runs)
    ref_boxes, our_boxes = len(reference()[0].pred_instances), len(ours.predict(image).boxes)
    print(f"mmdetection 3.3.0 (PyTorch {torch.__version__}, eager): first {ref_first:.2f} s, "
          f"median {ref_median:.2f} s/image ({ref_boxes} boxes)")
    print(f"res2net_ms (MindSpore {ms.__version__}, graph + host numpy): first {our_first:.2f} s "
          f"(compiles), median {our_median:.2f} s/image ({our_boxes} boxes)")
    print(f"ours / mmdetection: {ratio:.2f} (median over {args.runs} alternating rounds)")
    for name, took in stage_times(ours, image):
        print(f"  ours, {name}: {took:.3f} s")


if __name__ == "__main__":
    from res2net_ms.process import exit_process

    main()
    exit_process(0)
