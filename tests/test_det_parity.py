"""The five detectors against mmdetection 3.3.0 itself (its R2-101-FPN configs of Faster R-CNN,
Mask R-CNN, Cascade R-CNN, Cascade Mask R-CNN and HTC, run on this CPU through
``tests/mmdet_reference.py``).

Random weights at small sizes (a backbone with two blocks per stage, images of about 150x210
resized to fit 320x192): preprocessing, anchors, box coder and RoI level mapping exactly; then,
for each detector, RPN proposals, the second stage fed with the reference's proposals, the
whole detector from the raw image and a batch of two, each matched box by box and mask by
mask. The opt-in test at the end runs the published checkpoints found in the folder
``$RES2NET_MMDET_CKPTS``.
"""
import os

import numpy as np
import pytest

from res2net_ms.det import coco_classes, create_detector, get_detector_config, list_detectors
from res2net_ms.det.anchors import AnchorGenerator
from res2net_ms.det.box_coder import DeltaXYWHBBoxCoder
from res2net_ms.det.preprocess import ImageMeta, preprocess
from res2net_ms.det.roi_head import map_roi_levels

pytestmark = [pytest.mark.torch, pytest.mark.mmdet]  # runs mmdetection itself
torch = pytest.importorskip("torch")
import mmdet_reference  # noqa: E402  (needs torch)

if mmdet_reference.import_mmdet() is None:
    pytest.skip("mmdetection is not installed (make test installs requirements-mmdet.txt)",
                allow_module_level=True)

LAYERS = (2, 2, 2, 2)
SCALE = (320, 192)
# Fewer proposals and detections than the configs' 1000 and 100, on both sides: the same code
# paths at a third of the heads' work. (Fewer fail to prove: 25 detections of random heads
# come from two to four classes; with 150 proposals, one HTC mask misses.)
TEST_CFG = {"rpn": {"nms_pre": 500, "max_per_img": 300}, "rcnn": {"max_per_img": 50}}
MIN_MATCHED = 0.99  # of the reference's boxes, found with IoU >= 0.99 and score within 1e-3;
# and of the matched masks, with mask IoU >= 0.99


def sample_images():
    """Two real photos (scikit-learn's), landscape and portrait, about 150x210 pixels."""
    from sklearn.datasets import load_sample_image

    return {"china": load_sample_image("china.jpg")[::3, ::3],
            "flower": np.ascontiguousarray(load_sample_image("flower.jpg")[::2, ::2][:, 100:250])}


def iou_matrix(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def match(ref_boxes, ref_scores, boxes, scores, ref_labels=None, labels=None):
    """For each reference box, our best box (same label): fraction found with IoU >= 0.99
    and score within 1e-3, the lowest IoU and the largest score difference among them."""
    if len(ref_boxes) == 0:
        return dict(found=1.0, count=0, worst_iou=1.0, worst_score=0.0)
    iou = iou_matrix(ref_boxes, boxes) if len(boxes) else np.zeros((len(ref_boxes), 0))
    if ref_labels is not None and len(boxes):
        iou = np.where(ref_labels[:, None] == labels[None, :], iou, 0.0)
    best = iou.argmax(axis=1) if len(boxes) else np.zeros(len(ref_boxes), int)
    best_iou = iou.max(axis=1, initial=0.0)
    score_diff = np.abs(scores[best] - ref_scores) if len(boxes) else np.ones(len(ref_boxes))
    found = (best_iou >= 0.99) & (score_diff <= 1e-3)
    return dict(found=float(found.mean()), count=len(ref_boxes),
                worst_iou=float(best_iou.min()), worst_score=float(score_diff.max()))


def assert_matched(what, result):
    print(f"{what}: {result['found'] * result['count']:.0f}/{result['count']} reference boxes "
          f"found (IoU >= 0.99, |score diff| <= 1e-3); lowest IoU {result['worst_iou']:.6f}, "
          f"largest score diff {result['worst_score']:.2e}")
    assert result["count"] > 0
    assert result["found"] >= MIN_MATCHED, what


def mask_ious(ref, boxes, labels, masks):
    """For each reference detection, the mask IoU with our detection of the same label whose
    box overlaps it most."""
    iou = iou_matrix(ref.bboxes.double().numpy(), boxes)
    iou = np.where(ref.labels.numpy()[:, None] == labels[None, :], iou, 0.0)
    theirs, ours = ref.masks.numpy(), masks[iou.argmax(axis=1)]
    union = (theirs | ours).reshape(len(ours), -1).sum(axis=1)
    inter = (theirs & ours).reshape(len(ours), -1).sum(axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def assert_detections_match(what, ref, boxes, scores, labels, masks=None):
    """Boxes matched as :func:`match`; with masks, the matched masks' IoU too."""
    assert_matched(what, match(ref.bboxes.numpy(), ref.scores.numpy(), boxes, scores,
                               ref.labels.numpy(), labels))
    if "masks" not in ref:
        assert masks is None
        return
    assert masks.shape[1:] == ref.masks.shape[1:]
    ious = mask_ious(ref, boxes, labels, masks)
    area = ref.masks.numpy().reshape(len(ious), -1).sum(axis=1)
    print(f"{what}: {np.sum(ious >= 0.99)}/{len(ious)} masks with IoU >= 0.99, lowest "
          f"{ious.min():.4f}; reference mask areas {area.min()}..{area.max()} px "
          f"(median {np.median(area):.0f})")
    assert np.median(area) > 20, "masks too small to prove anything"
    assert np.mean(ious >= 0.99) >= MIN_MATCHED, what


@pytest.fixture(scope="module", params=list_detectors())
def setup(request, tmp_path_factory):
    """mmdet's detector with random weights, saved as an mmdetection checkpoint and loaded
    into ours through the converter; the stage outputs of the reference for every image."""
    name = request.param
    images = sample_images()
    cfg = mmdet_reference.detector_config(get_detector_config(name).mmdet_config, LAYERS, SCALE)
    for part, changes in TEST_CFG.items():
        cfg.model.test_cfg[part].update(changes)
    model = mmdet_reference.build_detector(cfg)
    mmdet_reference.randomise(model, mmdet_reference.pipeline_inputs(cfg, images["china"]))
    path = tmp_path_factory.mktemp("det") / f"{name}_tiny.pth"
    torch.save({"meta": {"mmdet_version": "3.3.0", "dataset_meta": {"classes": coco_classes()}},
                "state_dict": model.state_dict()}, path)
    ours = create_detector(name, checkpoint_path=path, backbone_kwargs=dict(layers=LAYERS),
                           scale=SCALE, test_cfg=TEST_CFG)
    refs = {}
    for image_name, image in images.items():
        batch = mmdet_reference.pipeline_inputs(cfg, image)
        refs[image_name] = dict(batch=batch, f32=mmdet_reference.run_stages(model, batch),
                                f64=mmdet_reference.run_stages(model, batch, torch.float64))
    return dict(name=name, cfg=cfg, images=images, model=model, ours=ours, refs=refs,
                report=ours.load_report, alone={})


def predicted_alone(setup, name):
    """Our detections of photo ``name`` on its own, computed once for the tests that use it."""
    if name not in setup["alone"]:
        setup["alone"][name] = setup["ours"].predict(setup["images"][name])
    return setup["alone"][name]


def test_checkpoint_converted_strictly(setup):
    """Every parameter of ours comes from the file, with mmdetection's names."""
    report = setup["report"]
    assert report.layout == "mmdet" and not report.missing and not report.mismatched
    assert report.mapped == len(list(setup["ours"].get_parameters()))
    assert setup["ours"].class_names == coco_classes()
    assert setup["ours"].backbone.layer1[0].pool is None  # mmdetection's stage pool


def test_preprocessing_is_mmdetections_exactly():
    from mmdet.registry import MODELS

    cfg = mmdet_reference.faster_rcnn_config()
    preprocessor = MODELS.build(cfg.model.data_preprocessor)
    rs = np.random.RandomState(0)
    for height, width in [(427, 640), (640, 427), (97, 131), (1000, 1500), (800, 1333)]:
        image = rs.randint(0, 256, (height, width, 3)).astype(np.uint8)
        batch = mmdet_reference.pipeline_inputs(cfg, image)
        with torch.no_grad():
            data = preprocessor(batch, False)
        ours, meta = preprocess(image)
        np.testing.assert_array_equal(ours, data["inputs"].numpy())
        ref_meta = data["data_samples"][0].metainfo
        assert meta.img_shape == tuple(ref_meta["img_shape"])
        assert meta.scale_factor == tuple(ref_meta["scale_factor"])


def test_anchors_box_coder_and_roi_levels_are_mmdetections():
    from mmdet.models.task_modules import build_prior_generator
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder as MMCoder
    from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor as MMExtractor

    cfg = mmdet_reference.faster_rcnn_config().model
    sizes = [(25, 34), (13, 17), (7, 9), (4, 5), (2, 3)]
    ref = build_prior_generator(cfg.rpn_head.anchor_generator).grid_priors(sizes, device="cpu")
    for ours, theirs in zip(AnchorGenerator().grid_anchors(sizes), ref):
        np.testing.assert_array_equal(ours, theirs.numpy())
    rs = np.random.RandomState(0)
    rois = np.concatenate([rs.uniform(0, 300, (500, 2)), rs.uniform(300, 900, (500, 2))],
                          axis=1).astype(np.float32)
    deltas = (rs.randn(500, 8) * 3).astype(np.float32)  # large enough to hit the clamps
    for stds in ((1.0, 1.0, 1.0, 1.0), (0.1, 0.1, 0.2, 0.2)):
        theirs = MMCoder(target_stds=stds).decode(
            torch.from_numpy(rois).repeat_interleave(2, 0), torch.from_numpy(deltas).view(-1, 4),
            max_shape=(600, 800)).view(500, 8).numpy()
        ours = DeltaXYWHBBoxCoder(stds=stds).decode(rois, deltas, max_shape=(600, 800))
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-3)  # float32 exp
    extractor = MMExtractor(dict(type="RoIAlign", output_size=7, sampling_ratio=0), 256,
                            [4, 8, 16, 32])
    widths = np.exp(rs.uniform(np.log(2), np.log(1500), (2000, 2))).astype(np.float32)
    boxed = np.concatenate([np.zeros((2000, 3), np.float32), widths], axis=1)
    np.testing.assert_array_equal(map_roi_levels(boxed),
                                  extractor.map_roi_levels(torch.from_numpy(boxed), 4).numpy())


def test_reference_agrees_with_itself_in_float64(setup):
    """The precondition of the comparisons: scores are far enough apart that float32 rounding
    changes no box of the reference, and mask probabilities far enough from the cut that it
    changes no mask."""
    for name, ref in setup["refs"].items():
        _, rpn32, det32 = ref["f32"]
        _, rpn64, det64 = ref["f64"]
        for what, a, b, labels in (("proposals", rpn32, rpn64, False),
                                   ("detections", det32, det64, True)):
            assert len(a.bboxes) == len(b.bboxes), f"{name} {what}"
            found = match(b.bboxes.numpy(), b.scores.numpy(), a.bboxes.double().numpy(),
                          a.scores.double().numpy(), *((b.labels.numpy(), a.labels.numpy())
                                                       if labels else ()))
            assert found["found"] == 1.0, f"{name} {what}: {found}"
        if "masks" in det64:
            ious = mask_ious(det64, det32.bboxes.double().numpy(), det32.labels.numpy(),
                             det32.masks.numpy())
            assert np.mean(ious >= 0.99) == 1.0, f"{name} masks: lowest IoU {ious.min()}"


def test_rpn_proposals_match_mmdetection(setup):
    ours = setup["ours"]
    for name, ref in setup["refs"].items():
        inputs, rpn, _ = ref["f32"]
        _, scores, deltas = ours.forward_dense(inputs)
        img_shape = tuple(ref["batch"]["data_samples"][0].metainfo["img_shape"])
        boxes, box_scores = ours.proposals(scores, deltas, img_shape)
        print(f"best scores: reference {rpn.scores.numpy()[:3]}, ours {box_scores[:3]}")
        assert_matched(f"{setup['name']}: RPN proposals ({name})", match(
            rpn.bboxes.numpy(), rpn.scores.numpy(), boxes, box_scores))


def test_second_stage_on_reference_proposals_matches_mmdetection(setup):
    ours = setup["ours"]
    for name, ref in setup["refs"].items():
        inputs, rpn, det = ref["f32"]
        feats, _, _ = ours.forward_dense(inputs)
        meta = ref["batch"]["data_samples"][0].metainfo
        found = ours.roi_head.predict(feats, [rpn.bboxes.numpy()], [ImageMeta(
            tuple(meta["ori_shape"]), tuple(meta["img_shape"]), tuple(inputs.shape[2:]),
            tuple(meta["scale_factor"]))])[0]
        assert_detections_match(
            f"{setup['name']}: second stage on the reference's proposals ({name})", det,
            found["boxes"], found["scores"], found["labels"], found.get("masks"))


def test_whole_detector_matches_mmdetection(setup):
    for name in setup["images"]:
        _, _, det = setup["refs"][name]["f32"]
        result = predicted_alone(setup, name)
        assert_detections_match(f"{setup['name']}: whole detector from the image ({name})",
                                det, result.boxes, result.scores, result.labels, result.masks)
        assert len(np.unique(result.labels)) > 5  # the random heads do not favour one class
        assert list(result.names[:3]) == [coco_classes()[i] for i in result.labels[:3]]


def test_a_batch_gives_what_each_image_gives_alone(setup):
    """Two photos of one padded size in one compiled call: each matches mmdetection's result
    for it alone, and equals our own one-image result."""
    ours, china = setup["ours"], setup["images"]["china"]
    mirrored = np.ascontiguousarray(china[:, ::-1])
    batch = mmdet_reference.pipeline_inputs(setup["cfg"], mirrored)
    _, _, det = mmdet_reference.run_stages(setup["model"], batch)
    alone = predicted_alone(setup, "china")
    batched = ours.predict([china, mirrored], batch_size=2)
    assert_detections_match(f"{setup['name']}: mirrored photo, second of a batch of two", det,
                            batched[1].boxes, batched[1].scores, batched[1].labels,
                            batched[1].masks)
    np.testing.assert_allclose(batched[0].boxes, alone.boxes, atol=1e-3)
    np.testing.assert_allclose(batched[0].scores, alone.scores, atol=1e-5)
    np.testing.assert_array_equal(batched[0].labels, alone.labels)
    if alone.masks is not None:
        assert np.mean(batched[0].masks != alone.masks) < 1e-4


def published_file(name):
    """The published checkpoint of ``name`` in ``$RES2NET_MMDET_CKPTS`` (a folder), or None."""
    folder = os.environ.get("RES2NET_MMDET_CKPTS")
    path = os.path.join(folder, get_detector_config(name).weights) if folder else None
    return path if path and os.path.isfile(path) else None


@pytest.mark.slow
@pytest.mark.parametrize("name", list_detectors())
def test_published_checkpoint_matches_mmdetection(name):
    """A published detector on a real photo at full size (1333x800), ours against mmdet; runs
    for each file found in ``$RES2NET_MMDET_CKPTS`` under its published name."""
    from sklearn.datasets import load_sample_image

    path = published_file(name)
    if path is None:
        pytest.skip(f"put {get_detector_config(name).weights} in the folder $RES2NET_MMDET_CKPTS "
                    "names to run it")
    image = load_sample_image("china.jpg")
    ours = create_detector(name, checkpoint_path=path)
    cfg = mmdet_reference.detector_config(get_detector_config(name).mmdet_config)
    model = mmdet_reference.build_detector(cfg)
    saved = torch.load(path, map_location="cpu", weights_only=False)  # the user's own file
    model.load_state_dict(saved["state_dict"], strict=True)
    _, _, det = mmdet_reference.run_stages(model, mmdet_reference.pipeline_inputs(cfg, image))
    result = ours.predict(image)
    assert_detections_match(f"{name}: published checkpoint, whole detector", det,
                            result.boxes, result.scores, result.labels, result.masks)
