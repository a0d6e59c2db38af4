"""The detectors' own ops against their references: RoIAlign (aligned, adaptive sampling) and
batched NMS against torchvision, on many random cases and on the edge cases where MindSpore's
ops differ; mask pasting against mmdetection's; the semantic head's resizes and the mask head's
deconvolution against torch."""
import numpy as np
import pytest

from res2net_ms.det.mask_head import paste_mask, paste_masks
from res2net_ms.det.nms import batched_nms, nms
from res2net_ms.det.roi_align import roi_align

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
tv_ops = pytest.importorskip("torchvision.ops")

ROI_CASES = 400
NMS_CASES = 300


def random_rois(rs, n, height, width, scale, count):
    """Boxes of every kind: under one bin (even under a pixel), large, partly or wholly
    outside the feature map, degenerate (zero width) and inverted."""
    extent = np.array([width, height], np.float32) / scale
    xy = rs.uniform(-0.3, 1.2, (count, 2)) * extent
    kind = rs.randint(0, 6, count)
    size = np.where(kind[:, None] == 0, rs.uniform(0, 1.0 / scale, (count, 2)),   # < 1 pixel
           np.where(kind[:, None] == 1, rs.uniform(0, 7.0 / scale, (count, 2)),   # < 1 bin
           np.where(kind[:, None] == 2, 0.0,                                       # degenerate
           np.where(kind[:, None] == 3, -rs.uniform(0, 3.0 / scale, (count, 2)),  # inverted
                    rs.uniform(0, 1.5, (count, 2)) * extent))))
    boxes = np.concatenate([xy, xy + size], axis=1)
    return np.concatenate([rs.randint(0, n, (count, 1)), boxes], axis=1).astype(np.float32)


def torchvision_roi_align(features, rois, output_size, scale, sampling_ratio, aligned):
    return tv_ops.roi_align(torch.from_numpy(features), torch.from_numpy(rois), output_size,
                            scale, sampling_ratio, aligned).numpy()


def test_roi_align_matches_torchvision_aligned_adaptive():
    rs = np.random.RandomState(0)
    worst, rois_seen = 0.0, 0
    for _ in range(ROI_CASES):
        n, channels = rs.randint(1, 3), rs.randint(1, 6)
        height, width = rs.randint(1, 48), rs.randint(1, 48)
        scale = float(rs.choice([1.0, 1 / 4, 1 / 8, 1 / 16, 1 / 32]))
        features = rs.randn(n, channels, height, width).astype(np.float32)
        rois = random_rois(rs, n, height, width, scale, rs.randint(0, 24))
        ours = roi_align(features, rois, 7, scale, 0, True)
        ref = torchvision_roi_align(features, rois, 7, scale, 0, True)
        assert ours.shape == ref.shape and np.isfinite(ours).all()
        worst = max(worst, float(np.abs(ours - ref).max(initial=0.0)))
        rois_seen += len(rois)
    print(f"RoIAlign aligned, sampling_ratio=0: {ROI_CASES} cases, {rois_seen} RoIs, "
          f"max |error| {worst:.2e}")
    assert worst <= 2e-6


@pytest.mark.parametrize("sampling_ratio, aligned, output_size", [
    (2, True, 7), (0, False, 7), (1, False, (5, 3)), (0, True, (14, 14))])
def test_roi_align_other_settings(sampling_ratio, aligned, output_size):
    rs = np.random.RandomState(1)
    for _ in range(40):
        features = rs.randn(2, 3, rs.randint(1, 40), rs.randint(1, 40)).astype(np.float32)
        rois = random_rois(rs, 2, *features.shape[2:], 0.25, 12)
        np.testing.assert_allclose(
            roi_align(features, rois, output_size, 0.25, sampling_ratio, aligned),
            torchvision_roi_align(features, rois, output_size, 0.25, sampling_ratio, aligned),
            atol=2e-6)


def test_roi_align_rois_under_a_bin_where_mindspore_gives_nan():
    features = np.random.RandomState(2).randn(1, 4, 20, 20).astype(np.float32)
    rois = np.array([[0, 10, 10, 12, 11], [0, 3.3, 4.1, 3.4, 4.2], [0, 18, 18, 40, 40],
                     [0, -5, -5, 2, 2], [0, 30, 30, 31, 31]], np.float32)
    ours = roi_align(features, rois, 7, 1.0, 0, True)
    np.testing.assert_allclose(ours, torchvision_roi_align(features, rois, 7, 1.0, 0, True),
                               atol=2e-6)
    assert np.isfinite(ours).all() and np.abs(ours[:4]).sum() > 0
    assert np.abs(ours[4]).max() == 0  # wholly outside: every sample is empty


def random_boxes(rs, count, coordinate_scale):
    """Clustered boxes (so that many overlap near any threshold), duplicates and empty ones."""
    centres = rs.uniform(0, coordinate_scale, (max(1, count // 20), 2))
    xy = centres[rs.randint(0, len(centres), count)] + rs.randn(count, 2) * coordinate_scale / 200
    wh = rs.uniform(0.5, 1.0, (count, 2)) * coordinate_scale / 10
    wh[rs.rand(count) < 0.03] = 0  # empty boxes
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    dup = rs.rand(count) < 0.05
    boxes[dup] = boxes[rs.randint(0, count, dup.sum())]
    return boxes


@pytest.mark.slow
def test_batched_nms_matches_torchvision():
    rs = np.random.RandomState(3)
    kept_total, boxes_total = 0, 0
    for case in range(NMS_CASES):
        count = int(rs.choice([0, 1, 2, 5, 50, 300, 1000, 1001, 2500]))
        boxes = random_boxes(rs, count, float(rs.choice([1.0, 100.0, 1333.0, 1e5])))
        scores = rs.rand(count).astype(np.float32)
        if case % 4 == 0:  # many tied scores
            scores = np.round(scores * 8) / 8
        classes = rs.randint(0, int(rs.choice([1, 3, 80])), count)
        threshold = float(rs.choice([0.0, 0.3, 0.5, 0.7, 0.95, 1.0]))
        # torchvision on CPU offsets the classes up to 1000 boxes, runs one NMS each above
        ours = batched_nms(boxes, scores, classes, threshold, split_thr=1001)
        ref = tv_ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                 torch.from_numpy(classes), threshold).numpy()
        assert np.array_equal(np.sort(ours), np.sort(ref)), f"case {case}: different boxes kept"
        assert np.array_equal(scores[ours], scores[ref]), f"case {case}: different order"
        if count <= 1000 or len(np.unique(scores)) == count:
            assert np.array_equal(ours, ref), f"case {case}: different order of ties"
        kept_total, boxes_total = kept_total + len(ours), boxes_total + count
    print(f"batched NMS: {NMS_CASES} cases, {boxes_total} boxes, {kept_total} kept, "
          "all identical to torchvision")


def test_nms_matches_torchvision_on_edge_cases():
    cases = {
        "identical boxes, tied scores": (np.tile([[0, 0, 10, 10]], (5, 1)), np.ones(5)),
        "empty boxes": (np.array([[5, 5, 5, 9], [5, 5, 5, 9], [0, 0, 4, 4]]), [0.9, 0.8, 0.7]),
        "touching edges": (np.array([[0, 0, 10, 10], [10, 0, 20, 10]]), [0.5, 0.6]),
        "IoU exactly one half": (np.array([[0, 0, 10, 10], [0, 0, 10, 5]]), [0.9, 0.8]),
        "negative coordinates": (np.array([[-20, -20, -10, -10], [-19, -19, -10, -10]]),
                                 [0.1, 0.2]),
        "nothing": (np.zeros((0, 4)), np.zeros(0)),
    }
    for name, (boxes, scores) in cases.items():
        boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
        for threshold in (0.0, 0.5, 1.0):
            ref = tv_ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold)
            assert np.array_equal(nms(boxes, scores, threshold), ref.numpy()), name


PASTE_CASES = 300


def mmdet_paste(probs, boxes, height, width):
    """mmdetection's own pasting, as its mask head runs it on a CPU (one box at a time)."""
    import mmdet_reference

    if mmdet_reference.import_mmdet() is None:
        pytest.skip("mmdetection is not installed")
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask

    out = np.zeros((len(probs), height, width), np.float32)
    for k, (prob, box) in enumerate(zip(probs, boxes)):
        pasted, (rows, cols) = _do_paste_mask(torch.from_numpy(prob)[None, None],
                                              torch.from_numpy(box)[None], height, width)
        out[k, rows, cols] = pasted[0].numpy()
    return out


def test_mask_pasting_matches_mmdetection():
    """Probabilities pasted into boxes of every kind (sub-pixel, thin, larger than the image,
    at its borders, empty): the same maps as mmdetection's ``_do_paste_mask``, and the same
    masks at the 0.5 cut except where a value is within float32 rounding of the cut."""
    rs = np.random.RandomState(4)
    worst, flipped, pixels = 0.0, 0, 0
    for case in range(PASTE_CASES):
        height, width = rs.randint(1, 90), rs.randint(1, 90)
        count = rs.randint(1, 5)
        xy = rs.uniform(-0.2, 1.0, (count, 2)) * [width, height]
        size = np.exp(rs.uniform(np.log(0.2), np.log(120), (count, 2)))
        size[rs.rand(count) < 0.05] = 0  # empty boxes
        boxes = np.concatenate([xy, xy + size], axis=1).astype(np.float32)
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)  # as the detector clips them
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
        logits = rs.randn(count, 28, 28).cumsum(axis=1).cumsum(axis=2) / 6  # smooth blobs
        probs = (1 / (1 + np.exp(-logits))).astype(np.float32)
        ours = np.stack([paste_mask(p, b, height, width) for p, b in zip(probs, boxes)])
        ref = mmdet_paste(probs, boxes, height, width)
        worst = max(worst, float(np.abs(ours - ref).max()))
        masks = paste_masks(probs, boxes, height, width)
        differ = masks != (ref >= 0.5)
        assert np.all(np.abs(ref[differ] - 0.5) < 1e-6), f"case {case}"
        flipped, pixels = flipped + int(differ.sum()), pixels + masks.size
    print(f"mask pasting: {PASTE_CASES} cases, max |difference| {worst:.1e}, {flipped} of "
          f"{pixels} mask pixels on the other side of 0.5 (all within 1e-6 of it)")
    assert worst <= 1e-6


def test_semantic_head_resize_matches_torch():
    """HTC's fused semantic head resizes every level to P3 with bilinear interpolation,
    ``align_corners=True``: MindSpore's ``ops.interpolate`` against torch's, down and up."""
    import mindspore as ms
    from mindspore import ops

    rs = np.random.RandomState(5)
    for source, target in [((48, 80), (24, 40)), ((12, 20), (24, 40)), ((6, 10), (24, 40)),
                           ((3, 5), (24, 40)), ((25, 42), (13, 21)), ((4, 7), (13, 21))]:
        x = rs.randn(2, 3, *source).astype(np.float32)
        ours = ops.interpolate(ms.Tensor(x), size=target, mode="bilinear",
                               align_corners=True).asnumpy()
        ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=target,
                                              mode="bilinear", align_corners=True).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-5, err_msg=f"{source} -> {target}")


def test_mask_head_deconv_matches_torch():
    """The mask head's 2x upsampling (``ConvTranspose2d(k=2, s=2)``), weights in torch's
    layout."""
    import mindspore as ms
    from mindspore import nn

    rs = np.random.RandomState(6)
    x = rs.randn(3, 8, 14, 14).astype(np.float32)
    weight, bias = rs.randn(8, 5, 2, 2).astype(np.float32), rs.randn(5).astype(np.float32)
    deconv = nn.Conv2dTranspose(8, 5, 2, stride=2, has_bias=True)
    deconv.weight.set_data(ms.Tensor(weight))
    deconv.bias.set_data(ms.Tensor(bias))
    ref = torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(weight),
                                               torch.from_numpy(bias), stride=2)
    np.testing.assert_allclose(deconv(ms.Tensor(x)).asnumpy(), ref.numpy(), atol=1e-5)
