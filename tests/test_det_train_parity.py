"""Training of Faster and Mask R-CNN against mmdetection 3.3.0's own ``loss()`` (its R2-101-FPN
configs run on this CPU through ``tests/mmdet_reference.py``).

Both sides deterministic: mmdetection's ``PseudoSampler`` for the RPN and the R-CNN (ours
``"pseudo"``), RoIAlign with sampling ratio 2, no flip; reduced size: one block per stage, two
photos resized to fit 320x192 (the second smaller than the batch: its own padded area, and
proposals clipped to its border), 1000 best anchors per level and 200 proposals per image.
Random weights that prove something (``randomise``), and ground truth placed where the
reference's proposals are, each box with one clear best anchor. RoIs thinner than a feature
pixel, which MindSpore's ``ROIAlign`` would widen, are checked on their own below.

Each detector compiles ONE training step (losses, gradients, SGD update): its first call gives
the losses and the gradients it applied (kept by the test's optimizer), compared term by term
and parameter by parameter; Faster R-CNN then takes more steps, which lower the loss.
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from res2net_ms.det import coco_classes, create_detector, get_detector_config
from res2net_ms.det.bbox_head import Shared2FCBBoxHead
from res2net_ms.det.factory import train_settings
from res2net_ms.det.mask_target import mask_target
from res2net_ms.det.registry import TRAIN_CFG as DEFAULT_TRAIN_CFG
from res2net_ms.det.roi_extractor import RoIExtractor
from res2net_ms.det.roi_head import SingleRoIExtractor, StandardRoIHead
from res2net_ms.det.roi_loss import StandardRoIHeadLoss
from res2net_ms.det.sampler import RandomSampler
from res2net_ms.det.train_inputs import resize_masks
from res2net_ms.det.train_step import TrainStep

pytestmark = [pytest.mark.torch, pytest.mark.mmdet]  # runs mmdetection itself
torch = pytest.importorskip("torch")
import mmdet_reference  # noqa: E402  (needs torch)

if mmdet_reference.import_mmdet() is None:
    pytest.skip("mmdetection is not installed (make test installs requirements-mmdet.txt)",
                allow_module_level=True)

FASTER, MASK = "faster_rcnn_r2_101_fpn", "mask_rcnn_r2_101_fpn"
LAYERS = (1, 1, 1, 1)
SCALE = (320, 192)
PROPOSALS = {"nms_pre": 1000, "max_per_img": 200}
TRAIN_CFG = {"rpn": {"sampler": "pseudo"}, "rcnn": {"sampler": "pseudo"},
             "rpn_proposal": PROPOSALS, "static": {"max_gts": 8, "mask_rois": 32}}
TOLERANCE = 1e-3  # relative, every loss term and every gradient checked
LEARNING_RATE = 2e-7  # the pseudo sampler's RPN loss is large (divided by the positives only)
# (ours, mmdetection's) names of a few parameters of each part
GRADIENTS = {
    "backbone": [("backbone.layer2.0.conv1.weight", "backbone.layer2.0.conv1.weight"),
                 ("backbone.layer3.0.convs.1.weight", "backbone.layer3.0.convs.1.weight"),
                 ("backbone.layer4.0.bn3.gamma", "backbone.layer4.0.bn3.weight")],
    "fpn": [("neck.lateral_convs.0.weight", "neck.lateral_convs.0.conv.weight"),
            ("neck.fpn_convs.2.bias", "neck.fpn_convs.2.conv.bias")],
    "rpn head": [("rpn_head.rpn_conv.weight", "rpn_head.rpn_conv.weight"),
                 ("rpn_head.rpn_cls.weight", "rpn_head.rpn_cls.weight"),
                 ("rpn_head.rpn_reg.bias", "rpn_head.rpn_reg.bias")],
    "box head": [(f"roi_head.bbox_head.{n}", f"roi_head.bbox_head.{n}")
                 for n in ("shared_fcs.0.weight", "fc_cls.weight", "fc_reg.weight")],
    "mask head": [(f"roi_head.mask_head.{n}", f"roi_head.mask_head.{n}")
                  for n in ("convs.0.conv.weight", "conv_logits.weight")],
}


def sample_images():
    """Two real photos (scikit-learn's): 400x240, resized to fill the 320x192 batch, and
    300x220, resized to 262x192 (padded area 288x192)."""
    from sklearn.datasets import load_sample_image

    return [np.ascontiguousarray(load_sample_image("china.jpg")[50:290, 100:500]),
            np.ascontiguousarray(load_sample_image("flower.jpg")[100:320, 50:350])]


def place_ground_truth(model, images, seed=1):
    """Targets (input pixels) where the reference's proposals are: per image up to four of its
    RPN's best boxes, each corner moved by up to 5% of the box, kept when one anchor is
    clearly its best (IoU >= 0.7, the next at least 0.05 lower: no ties for the low-quality
    matching) and apart from the others (IoU <= 0.3); random labels; masks: an ellipse in
    the box with its lower left quarter cut away."""
    from mmdet.structures.bbox import bbox_overlaps

    rng = np.random.default_rng(seed)
    empty = [dict(boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64))
             for _ in images]
    with torch.no_grad():
        data = model.data_preprocessor(mmdet_reference.train_inputs(images, empty, SCALE), True)
        feats = model.extract_feat(data["inputs"])
        proposals = model.rpn_head.predict(feats, data["data_samples"], rescale=False)
        anchors = torch.cat(model.rpn_head.prior_generator.grid_priors(
            [f.shape[-2:] for f in feats], device="cpu"))
    targets = []
    for image, sample, found in zip(images, data["data_samples"], proposals):
        chosen = []
        for box in found.bboxes:
            size = torch.stack([box[2] - box[0], box[3] - box[1]] * 2)
            if size.min() < 12:
                continue
            gt = box + size * torch.from_numpy(rng.uniform(-0.05, 0.05, 4).astype(np.float32))
            best = bbox_overlaps(gt[None], anchors)[0].topk(2).values
            if best[0] < 0.7 or best[0] - best[1] < 0.05:
                continue
            if chosen and bbox_overlaps(gt[None], torch.stack(chosen)).max() > 0.3:
                continue
            chosen.append(gt)
            if len(chosen) == 4:
                break
        w_scale, h_scale = sample.scale_factor
        boxes = (torch.stack(chosen).numpy() / np.float32([w_scale, h_scale] * 2))
        height, width = image.shape[:2]
        ys, xs = np.mgrid[:height, :width] + 0.5
        masks = []
        for x1, y1, x2, y2 in boxes:
            cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
            ellipse = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 < 1
            masks.append(ellipse & ~((xs < cx) & (ys > cy + ry / 3)))
        targets.append(dict(boxes=boxes.astype(np.float32),
                            labels=rng.integers(0, 80, len(boxes)), masks=np.stack(masks)))
    return targets


class RecordingSGD(nn.Cell):
    """SGD with momentum that also keeps the gradients of its last step (the test reads
    them: the step's own gradients, from inside the compiled step)."""

    def __init__(self, params, learning_rate):
        super().__init__(auto_prefix=False)
        self.sgd = nn.SGD(params, learning_rate=learning_rate, momentum=0.9)
        self.parameters = self.sgd.parameters
        self.grads = self.parameters.clone(prefix="recorded", init="zeros")
        self.hyper_map = ops.HyperMap()

    def construct(self, grads):
        kept = self.hyper_map(ops.assign, self.grads, grads)
        return ops.depend(self.sgd(grads), kept)


def keep_proposals(model):
    """The reference's proposals of each image, as its R-CNN receives them, in a list that
    ``model.roi_head.loss`` fills."""
    seen, loss = [], model.roi_head.loss

    def loss_keeping_proposals(x, rpn_results, samples):
        seen.extend(r.bboxes.detach().clone() for r in rpn_results)
        return loss(x, rpn_results, samples)

    model.roi_head.loss = loss_keeping_proposals
    return seen


def thinner_than_a_feature_pixel(boxes):
    """How many boxes are narrower or lower than one pixel of their RoI level."""
    sizes = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=1)
    level = torch.floor(torch.log2(torch.sqrt(sizes.prod(dim=1)) / 56 + 1e-6)).clamp(0, 3)
    return int((sizes.min(dim=1).values < 4 * 2 ** level).sum())


def relative(ours, theirs):
    return float(np.linalg.norm(np.float64(ours) - np.float64(theirs))
                 / max(np.linalg.norm(np.float64(theirs)), 1e-30))


@pytest.fixture(scope="module", params=[FASTER, MASK])
def run(request, tmp_path_factory):
    """mmdetection's losses and gradients on a batch, and our compiled step's first call on
    the same weights and batch."""
    name = request.param
    images = sample_images()
    cfg = mmdet_reference.train_config(get_detector_config(name).mmdet_config, LAYERS, SCALE,
                                       rpn_proposal=PROPOSALS)
    cfg.model.test_cfg.rpn.update(PROPOSALS)  # what randomise and the gt placement run
    model = mmdet_reference.build_detector(cfg)
    mmdet_reference.randomise(model, mmdet_reference.pipeline_inputs(cfg, images[0]))
    targets = place_ground_truth(model, images)
    if name == FASTER:
        targets = [{k: v for k, v in t.items() if k != "masks"} for t in targets]
    parts = {part: pairs for part, pairs in GRADIENTS.items()
             if part != "mask head" or name == MASK}
    names = [theirs for pairs in parts.values() for _, theirs in pairs]
    path = tmp_path_factory.mktemp("det_train") / f"{name}_tiny.pth"
    torch.save({"meta": {"mmdet_version": "3.3.0", "dataset_meta": {"classes": coco_classes()}},
                "state_dict": model.state_dict()}, path)
    proposals = keep_proposals(model)
    ref_losses, ref_grads = mmdet_reference.loss_and_grads(
        model, mmdet_reference.train_inputs(images, targets, SCALE), names)

    ours = create_detector(name, checkpoint_path=path, backbone_kwargs=dict(layers=LAYERS),
                           scale=SCALE, train_cfg=TRAIN_CFG, roi_sampling_ratio=2)
    optimizer = RecordingSGD(ours.trainable_params(), learning_rate=LEARNING_RATE)
    step = TrainStep(ours.loss_cell(), optimizer)
    inputs = ours.loss_cell().inputs(images, targets)
    total, losses, overflow, _ = step(*inputs)
    assert int(overflow) == 0, "positives without a mask slot: raise mask_rois"
    recorded = {p.name[len("recorded."):]: p.asnumpy() for p in optimizer.grads}
    return dict(name=name, ref_losses=ref_losses, ref_grads=ref_grads, parts=parts,
                thin=[thinner_than_a_feature_pixel(p) for p in proposals],
                losses=dict(zip(ours.loss_cell().names, (float(x.asnumpy()) for x in losses))),
                total=float(total.asnumpy()), grads=recorded, step=step, inputs=inputs,
                detector=ours)


def test_losses_match_mmdetection(run):
    ref, ours = run["ref_losses"], run["losses"]
    assert set(ours) == {k for k in ref if k.startswith(("loss", "acc"))}
    assert ref["loss_bbox"] > 0 and ref["acc"] > 0, "no positive RoI: the batch proves little"
    print(f"{run['name']}: proposals thinner than a feature pixel per image: {run['thin']}")
    assert tuple(run["inputs"][1].asnumpy()[1]) == (192, 262)  # smaller than the batch
    worst = 0.0
    for key in ours:
        diff = abs(ours[key] - ref[key]) / abs(ref[key])
        worst = max(worst, diff)
        print(f"{run['name']} {key}: ours {ours[key]:.6f}, mmdetection {ref[key]:.6f}, "
              f"relative difference {diff:.1e}")
        assert diff <= TOLERANCE, key
    total = sum(v for k, v in ref.items() if "loss" in k)
    assert abs(run["total"] - total) <= TOLERANCE * total


def test_gradients_match_mmdetection(run):
    for part, pairs in run["parts"].items():
        for ours_name, ref_name in pairs:
            ref = run["ref_grads"][ref_name]
            diff = relative(run["grads"][ours_name], ref)
            print(f"{run['name']} {part} {ours_name}: |grad| {np.linalg.norm(ref):.3e}, "
                  f"relative difference {diff:.1e}")
            assert np.linalg.norm(ref) > 0, ours_name
            assert diff <= TOLERANCE, ours_name


def test_frozen_stages_get_no_update(run):
    """mmdetection's frozen stem and stage 1 (and every BN's statistics) stay as loaded;
    stage 2 trains."""
    params = {p.name: p for p in run["detector"].get_parameters()}
    trained = {p.name for p in run["detector"].trainable_params()}
    assert "backbone.layer1.0.conv1.weight" in params and not any(
        n.startswith(("backbone.stem", "backbone.conv1", "backbone.layer1.")) for n in trained)
    assert "backbone.layer2.0.conv1.weight" in trained
    assert not any("moving_" in n for n in trained)


def test_the_step_trains(run):
    """More calls of the same compiled step on the batch lower the total loss, step by step."""
    if run["name"] != FASTER:
        pytest.skip("trained on Faster R-CNN only: the mask head's gradient is slow on a CPU")
    totals = [run["total"]]
    for _ in range(2):
        total, _, _, _ = run["step"](*run["inputs"])
        totals.append(float(total.asnumpy()))
    print(f"{run['name']} total loss over 3 steps: {totals}")
    assert np.all(np.diff(totals) < 0) and totals[-1] < 0.8 * totals[0]


def test_roi_features_and_gradient_match_mmdetection():
    """The device RoI extractor against mmdetection's ``SingleRoIExtractor`` (mmcv RoIAlign,
    aligned, ratio 2), RoIs on every level and many thinner than a feature pixel (where
    MindSpore's ``ROIAlign`` would widen them), forward and gradient to every level."""
    from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor

    rng = np.random.default_rng(0)
    num, count, channels, strides = 2, 400, 8, (4, 8, 16, 32)
    height, width = 512, 640
    feats = [rng.standard_normal((num, channels, height // s, width // s)).astype(np.float32)
             for s in strides]
    size = np.exp(rng.uniform(np.log(0.5), np.log(900), (num, count)))
    aspect = np.exp(rng.uniform(-2.5, 2.5, (num, count)))
    x1 = rng.uniform(-4, width * 0.6, (num, count))
    y1 = rng.uniform(-4, height * 0.6, (num, count))
    boxes = np.stack([x1, y1, np.minimum(x1 + size * np.sqrt(aspect), width),
                      np.minimum(y1 + size / np.sqrt(aspect), height)],
                     axis=-1).astype(np.float32)
    weights = rng.standard_normal((num * count, channels, 7, 7)).astype(np.float32)
    extractor = RoIExtractor(strides, 7, 2)

    def weighted(f0, f1, f2, f3, b):
        return (extractor((f0, f1, f2, f3), b) * ms.Tensor(weights)).sum()

    value, grads = ms.jit(ms.value_and_grad(weighted, (0, 1, 2, 3)))(
        *[ms.Tensor(f) for f in feats], ms.Tensor(boxes))
    reference = SingleRoIExtractor(dict(type="RoIAlign", output_size=7, sampling_ratio=2,
                                        aligned=True), channels, list(strides))
    levels = [torch.tensor(f, requires_grad=True) for f in feats]
    rois = torch.cat([torch.arange(num).repeat_interleave(count)[:, None].float(),
                      torch.from_numpy(boxes.reshape(-1, 4))], dim=1)
    theirs = reference(levels, rois)
    (theirs * torch.from_numpy(weights)).sum().backward()
    ours = ms.jit(extractor)(tuple(ms.Tensor(f) for f in feats), ms.Tensor(boxes)).asnumpy()
    level = reference.map_roi_levels(rois, 4)
    thin = torch.minimum(rois[:, 3] - rois[:, 1], rois[:, 4] - rois[:, 2]) < 4.0 * 2 ** level
    assert thin.sum() > 50 and len(torch.unique(level)) == 4
    np.testing.assert_allclose(ours, theirs.detach().numpy(), atol=1e-4)
    for ours_grad, level_feats in zip(grads, levels):
        assert relative(ours_grad.asnumpy(), level_feats.grad.numpy()) < 1e-5


def test_mask_targets_match_mmdetection():
    """Mask targets (gt masks RoI-aligned to 28x28 with ADAPTIVE sampling, binarised) equal
    mmdetection's ``mask_target`` on RoIs of every size, partly outside the image."""
    from mmdet.structures.mask import BitmapMasks
    from mmdet.structures.mask import mask_target as mmdet_mask_target
    from mmengine.config import ConfigDict

    rng = np.random.default_rng(0)
    height, width = 96, 160
    ys, xs = np.mgrid[:height, :width]
    masks = np.stack([(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 < 1)
                      for cx, cy, rx, ry in [(50, 40, 30, 20), (100, 60, 40, 25),
                                             (140, 20, 15, 12)]])
    count = 96
    x1, y1 = rng.uniform(-10, width - 10, count), rng.uniform(-10, height - 10, count)
    boxes = np.stack([x1, y1, x1 + rng.uniform(0.5, 150, count), y1 + rng.uniform(0.5, 90, count)],
                     axis=1).astype(np.float32)
    owners = rng.integers(0, 3, count).astype(np.int32)
    ours = ms.jit(mask_target)(ms.Tensor(boxes), ms.Tensor(masks.astype(np.uint8)),
                               ms.Tensor(owners), 28).asnumpy()
    theirs = mmdet_mask_target([torch.from_numpy(boxes)], [torch.from_numpy(owners).long()],
                         [BitmapMasks(masks.astype(np.uint8), height, width)],
                         ConfigDict(mask_size=28)).numpy()
    mixed = [0 < t.mean() < 1 for t in theirs]
    assert sum(mixed) > count // 4, "too few RoIs on a mask edge to prove anything"
    np.testing.assert_array_equal(ours, theirs)


def test_masks_resized_as_opencv_nearest():
    import cv2

    rng = np.random.default_rng(0)
    masks = rng.random((3, 220, 300)) > 0.5
    for height, width in [(192, 262), (800, 1091), (77, 131)]:
        theirs = np.stack([cv2.resize(m.astype(np.uint8), (width, height),
                                      interpolation=cv2.INTER_NEAREST) for m in masks])
        np.testing.assert_array_equal(resize_masks(masks, height, width), theirs.astype(bool))


def _without_debug(cfg):
    """A train_cfg as plain dicts, without mmdetection's ``debug`` flags and NMS type."""
    if not isinstance(cfg, dict):
        return cfg
    return {k: _without_debug(v) for k, v in cfg.items()
            if k != "debug" and not (k == "type" and v == "nms")}


@pytest.mark.parametrize("name", [FASTER, MASK])
def test_default_training_settings_are_mmdetections(name):
    """TRAIN_CFG with each detector's changes is its mmdetection config's ``train_cfg``
    (assigner thresholds, 256/512 samples, positive fractions, proposal counts...)."""
    theirs = _without_debug(mmdetection_train_cfg(name))
    ours = train_settings(get_detector_config(name))
    assert set(ours) == set(theirs) | {"static"}
    for stage in theirs:
        mine = dict(ours[stage])
        if name == FASTER and stage == "rcnn":
            assert mine.pop("mask_size") == 28  # used by mask heads only
        assert mine == theirs[stage], stage
    pseudo = train_settings(get_detector_config(name), {"rpn": {"sampler": "pseudo"},
                                                        "rcnn": {"sampler": "pseudo"}})
    assert pseudo["rpn"]["sampler"] == pseudo["rcnn"]["sampler"] == {"type": "PseudoSampler"}


def mmdetection_train_cfg(name):
    cfg = mmdet_reference.detector_config(get_detector_config(name).mmdet_config)
    return cfg.model.train_cfg.to_dict()


@pytest.mark.parametrize("change, message", [
    ({"rpn": {"samplr": "pseudo"}}, r"unknown setting 'train_cfg.rpn.samplr': valid keys"),
    ({"rcnn": {"sampler": "ohem"}}, r"train_cfg.rcnn.sampler 'ohem': use 'pseudo', 'random'"),
    ({"statics": {}}, r"unknown setting 'train_cfg.statics'"),
])
def test_wrong_training_settings_are_named(change, message):
    with pytest.raises(ValueError, match=message) as error:
        train_settings(get_detector_config(MASK), change)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def tiny():
    """A mask detector with random weights that holds at most two boxes per image."""
    return create_detector(MASK, backbone_kwargs=dict(layers=LAYERS), scale=SCALE,
                           train_cfg={"static": {"max_gts": 2}})


def _target(boxes=((10, 20, 110, 90),), labels=None, masks="auto", size=(240, 400)):
    boxes = np.asarray(boxes, np.float32)
    target = {"boxes": boxes, "labels": np.arange(len(boxes)) if labels is None else labels}
    if isinstance(masks, str):
        masks = np.zeros((len(boxes),) + size, bool)
    if masks is not None:
        target["masks"] = masks
    return target


@pytest.mark.parametrize("target, message", [
    ({"boxes": np.zeros((1, 4))}, r"target 0: expected a dict with 'boxes' \(K, 4\) and "
                                  r"'labels'"),
    (_target(((10, 20, 5, 90),)), r"target 0: box 0 \[10.0, 20.0, 5.0, 90.0\] is not x1, y1, "
                                  r"x2, y2 with x2 > x1 and y2 > y1"),
    (_target(((10, 20, np.nan, 90),)), r"target 0: box 0 .* is not x1, y1, x2, y2"),
    (_target(((420, 20, 500, 90),)), r"target 0: box 0 lies outside the image \(400x240"),
    (_target(labels=np.array([80])), r"target 0: labels must be integers in 0..79, got 80..80"),
    (_target(((0, 0, 9, 9), (1, 1, 9, 9), (2, 2, 9, 9))),
     r"target 0 has 3 boxes, more than the 2 a batch holds: raise train_cfg\['static'\]"),
    (_target(masks=None), r"target 0: a mask detector needs 'masks' \(K, H, W\)"),
    (_target(masks=np.zeros((1, 24, 40), bool)), r"target 0: 'masks' must be \(K, H, W\) = "
                                                 r"\(1, 240, 400\), got \(1, 24, 40\)"),
])
def test_bad_targets_are_named_in_one_line(tiny, target, message):
    """Refused before anything is compiled, naming the image, the box and the fix."""
    with pytest.raises(ValueError, match=message) as error:
        tiny.loss([np.zeros((240, 400, 3), np.uint8)], [target])
    assert "\n" not in str(error.value)


def test_cascades_refuse_training():
    cascade = create_detector("cascade_rcnn_r2_101_fpn", backbone_kwargs=dict(layers=LAYERS),
                              scale=SCALE)
    with pytest.raises(ValueError, match="training is implemented for one-stage RoI heads"):
        cascade.loss([np.zeros((240, 400, 3), np.uint8)], [_target(masks=None)])


def test_random_sampler_draws_fixed_counts_from_the_candidates():
    """mmdetection's RandomSampler: at most num * pos_fraction positives, negatives up to num
    (or neg_pos_ub per positive), never an ignored or invalid prior; the same keys draw the
    same, other keys another."""
    rng = np.random.default_rng(0)
    gt_inds = rng.choice([-1, 0, 0, 0, 1, 2], size=(3, 3000)).astype(np.int32)
    gt_inds[1, gt_inds[1] > 0] = rng.choice([-1, 0], size=int((gt_inds[1] > 0).sum()))
    gt_inds[1, :40] = 3  # image 1: 40 positives only
    valid = rng.random((3, 3000)) > 0.1
    candidates_pos, candidates_neg = (gt_inds > 0) & valid, (gt_inds == 0) & valid
    for sampler, expect in ((RandomSampler(256, 0.5, add_gt_as_proposals=False), None),
                            (RandomSampler(256, 0.5, neg_pos_ub=3), 3)):
        draw = ms.jit(sampler)
        keys, other = (ms.Tensor(rng.random((3, 3000)).astype(np.float32)) for _ in range(2))
        pos, neg = (x.asnumpy() for x in draw(ms.Tensor(gt_inds), ms.Tensor(valid), keys))
        same, _ = draw(ms.Tensor(gt_inds), ms.Tensor(valid), keys)
        again, _ = draw(ms.Tensor(gt_inds), ms.Tensor(valid), other)
        assert not (pos & ~candidates_pos).any() and not (neg & ~candidates_neg).any()
        num_pos = pos.sum(axis=1)
        np.testing.assert_array_equal(num_pos, np.minimum(candidates_pos.sum(axis=1), 128))
        bound = 256 - num_pos if expect is None else np.minimum(256 - num_pos, 3 * num_pos)
        np.testing.assert_array_equal(neg.sum(axis=1), bound)
        np.testing.assert_array_equal(same.asnumpy(), pos)
        assert (again.asnumpy() != pos).any(), "other keys, the same draw"


def test_rcnn_sampling_puts_the_ground_truth_first_among_the_proposals():
    """The default R-CNN sampling (RandomSampler 512 / 0.25, add_gt_as_proposals): the valid
    gt boxes join the proposals as positives of their own gt, padded gt rows never do, and
    the slots hold the positives first."""
    head = StandardRoIHead(SingleRoIExtractor(), Shared2FCBBoxHead(80, in_channels=8,
                                                                   fc_out_channels=16))
    sampling = StandardRoIHeadLoss(head, DEFAULT_TRAIN_CFG["rcnn"])
    rng = np.random.default_rng(0)
    gt_boxes = np.zeros((2, 4, 4), np.float32)
    gt_boxes[:, :3] = [[10, 10, 60, 50], [100, 30, 180, 120], [200, 100, 260, 180]]
    gt_valid = np.array([[True] * 3 + [False], [True, True, False, False]])
    corner = rng.uniform(0, 250, (2, 1000, 2))
    proposals = np.concatenate([corner, corner + rng.uniform(4, 80, (2, 1000, 2))], axis=2)
    proposals[:, :30] = gt_boxes[:, :3].repeat(10, axis=1) + rng.uniform(-3, 3, (2, 30, 4))
    proposal_valid = rng.random((2, 1000)) > 0.05

    @ms.jit
    def sample(*args):
        priors, gt_inds, pos, neg = sampling._sample(*args)
        return (priors, gt_inds, pos, neg) + sampling._slots(pos, neg)

    priors, gt_inds, pos, neg, slots, slot_pos, slot_used = (x.asnumpy() for x in sample(
        ms.Tensor(proposals.astype(np.float32)), ms.Tensor(proposal_valid),
        ms.Tensor(gt_boxes), ms.Tensor(gt_valid),
        ms.Tensor(rng.random((2, sampling.num_priors(1000, 4))).astype(np.float32))))
    np.testing.assert_array_equal(priors[:, :4], gt_boxes)
    assert (gt_inds[:, :4][gt_valid] == np.tile(np.arange(1, 5), (2, 1))[gt_valid]).all()
    assert pos[:, :4][gt_valid].all() and not (pos | neg)[:, :4][~gt_valid].any()
    assert (pos[:, 4:34].sum(axis=1) > 10).all()  # jittered copies of the gt boxes
    num_pos = pos.sum(axis=1)
    assert (num_pos <= 128).all() and (num_pos + neg.sum(axis=1) == 512).all()
    for image in range(2):
        assert slot_used[image].all() and slot_pos[image].sum() == num_pos[image]
        assert slot_pos[image, :num_pos[image]].all()
        assert set(slots[image, slot_pos[image]]) == set(np.nonzero(pos[image])[0])


def test_ema_is_mmdetections_exp_momentum_ema():
    """``ema: true`` with ``ema_decay: 0.9998`` averages as mmdetection's ``ExpMomentumEMA``
    (momentum 0.0002, gamma 2000) over a series of weights, from the second update on: its
    first update copies the weights where ours keeps 0.05 % of the initial ones, a difference
    the next updates scale by their own small decays (to about 1e-9 after three)."""
    from mmdet.models.layers import ExpMomentumEMA

    from res2net_ms.engine.train_step import EMA

    ours_net, theirs_net = nn.Dense(4, 3), torch.nn.Linear(4, 3)
    ema = EMA(ours_net, decay=0.9998)
    theirs = ExpMomentumEMA(theirs_net, momentum=0.0002, gamma=2000)
    rng = np.random.RandomState(0)
    for _ in range(20):
        weight, bias = rng.randn(3, 4).astype(np.float32), rng.randn(3).astype(np.float32)
        ours_net.weight.set_data(ms.Tensor(weight))
        ours_net.bias.set_data(ms.Tensor(bias))
        with torch.no_grad():
            theirs_net.weight.copy_(torch.from_numpy(weight))
            theirs_net.bias.copy_(torch.from_numpy(bias))
        ema()
        theirs.update_parameters(theirs_net)
    averaged = {p.name[len("ema."):]: p.asnumpy() for p in ema.ema_weights}
    assert not np.allclose(averaged["weight"], weight, atol=1e-3)  # a real average
    np.testing.assert_allclose(averaged["weight"], theirs.module.weight.detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(averaged["bias"], theirs.module.bias.detach().numpy(),
                               rtol=1e-5, atol=1e-6)
