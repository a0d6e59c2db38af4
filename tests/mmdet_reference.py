"""mmdetection 3.3.0 itself as the reference detector, runnable on this CPU without mmcv's
compiled ops.

mmcv-lite lacks ``mmcv._ext``; mmcv's ops only check at import that the names they use exist,
and mmdet's Faster R-CNN calls two of them: ``nms`` and ``roi_align_forward`` (training also
``roi_align_backward``). The stand-in below routes those to torchvision (exact for
``offset=0``, average mode; the backward is torchvision's own RoIAlign gradient kernel, the
detectron2 code that mmcv's is too) and makes every other name exist but refuse to run. Used
by ``tests/test_det_parity.py``, ``tests/test_det_train_parity.py`` and the detection
benchmarks (``benchmarks/detect_bench.py``, ``det_train_bench.py``); needs the test extra and
``requirements-mmdet.txt``.
"""
import os
import sys
import types

import numpy as np
import torch
import torchvision


class _StandInExt(types.ModuleType):
    """``mmcv._ext`` with nms and roi_align_forward; other ops exist but raise if called."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name} is not in the test stand-in")
        return missing

    @staticmethod
    def nms(boxes, scores, iou_threshold, offset=0):
        assert offset == 0, "the stand-in computes IoU without +1"
        return torchvision.ops.nms(boxes, scores, float(iou_threshold))

    @staticmethod
    def roi_align_forward(features, rois, output, argmax_y, argmax_x, aligned_height,
                          aligned_width, spatial_scale, sampling_ratio, pool_mode, aligned):
        assert pool_mode == 1, "the stand-in computes average RoIAlign only"
        output.copy_(torchvision.ops.roi_align(
            features, rois, (aligned_height, aligned_width), spatial_scale, sampling_ratio,
            aligned))

    @staticmethod
    def roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, aligned_height,
                           aligned_width, spatial_scale, sampling_ratio, pool_mode, aligned):
        assert pool_mode == 1, "the stand-in computes average RoIAlign only"
        batch, channels, height, width = grad_input.shape
        grad_input.copy_(torch.ops.torchvision._roi_align_backward(
            grad_output, rois, spatial_scale, aligned_height, aligned_width, batch, channels,
            height, width, sampling_ratio, aligned))


def import_mmdet():
    """Import mmdet (and register its modules) with the stand-in in place; None if absent.

    PyTorch is given every core: a process that imported MindSpore first has
    ``OMP_NUM_THREADS=1`` in its C environment, which would hold PyTorch to one thread."""
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        import mmcv._ext  # noqa: F401  (the full mmcv, when installed, is used as it is)
    except ImportError:
        sys.modules["mmcv._ext"] = _StandInExt("mmcv._ext")
    try:
        import mmdet  # noqa: F401
        from mmdet.utils import register_all_modules
    except ImportError:
        return None
    register_all_modules()
    return mmdet


def faster_rcnn_config(layers=None, scale=(1333, 800)):
    """The config of mmdet's Faster R-CNN R2-101-FPN (2x COCO), test pipeline included."""
    return detector_config("faster-rcnn_res2net-101_fpn_2x_coco", layers, scale)


def detector_config(name, layers=None, scale=(1333, 800)):
    """The config ``configs/res2net/<name>.py`` of mmdet, test pipeline included.

    ``layers`` (blocks per stage) gives a reduced-depth backbone; ``scale`` the resize target.
    """
    import mmdet
    from mmengine.config import Config

    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", "res2net",
                        name + ".py")
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None
    if layers is not None:
        _register_reduced_res2net(tuple(layers))
        cfg.model.backbone.type = "ReducedRes2Net"
        cfg.model.backbone.depth = sum(layers) * 3 + 2
    for step in cfg.test_pipeline:
        if step["type"] == "Resize":
            step["scale"] = scale
    return cfg


def _register_reduced_res2net(layers):
    from mmdet.models.backbones.res2net import Bottle2neck, Res2Net
    from mmdet.registry import MODELS

    class ReducedRes2Net(Res2Net):
        arch_settings = {sum(layers) * 3 + 2: (Bottle2neck, layers)}

    MODELS.register_module(name="ReducedRes2Net", module=ReducedRes2Net, force=True)


def build_detector(cfg):
    """mmdet's detector of ``cfg`` in eval mode (random weights)."""
    from mmdet.registry import MODELS

    model = MODELS.build(cfg.model)
    return model.eval()


def _heads(module):
    """A head, or a cascade's list of heads, as a list."""
    if module is None:
        return []
    return list(module) if isinstance(module, torch.nn.ModuleList) else [module]


def randomise(model, batch, seed=0, rpn_logit_std=2.0, rpn_delta_std=0.1, cls_logit_std=2.0,
              reg_delta_std=0.5, mask_logit_std=8.0):
    """Random weights that exercise every part: BN with non-trivial statistics, and head
    outputs of chosen spread on ``batch`` (scores far apart, so that rounding cannot reorder
    them: small random heads give near-tied scores, and then float32 and float64 disagree).
    The heads are set in the order they run (RPN, box stages, mask stages), each measured on
    the outputs of the ones before it."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=gen) * std)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                uniform(m.weight, 0.5, 1.5)
                uniform(m.bias, -0.2, 0.2)
                uniform(m.running_mean, -0.5, 0.5)
                uniform(m.running_var, 0.5, 2.0)
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                normal(m.weight, (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    normal(m.bias, 0.1)
        roi_head = model.roi_head
        rpn, box_heads = model.rpn_head, _heads(roi_head.bbox_head)
        mask_heads = _heads(getattr(roi_head, "mask_head", None))
        # Set in runs of the reference, each head measured on what the heads before it give,
        # except that the mask heads' logits, which feed no other head, share one run. The
        # features are the backbone's and FPN's, which stay as set above, so computed once;
        # each run ends where the next group's head (or the first of the RoI head, for the
        # RPN's) would start, as nothing after it changes what was measured.
        groups = [[((rpn.rpn_cls, rpn.rpn_reg), (rpn_logit_std, rpn_delta_std))]]
        groups += [[((head.fc_cls, head.fc_reg), (cls_logit_std, reg_delta_std))]
                   for head in box_heads]
        roi_start = [m for m in (getattr(roi_head, "semantic_head", None),
                                 _heads(roi_head.bbox_roi_extractor)[0]) if m is not None]
        stops = [roi_start] + [[head] for head in box_heads[1:]] + [mask_heads[:1], []]
        if mask_heads:
            groups.append([((head.conv_logits,), (mask_logit_std,)) for head in mask_heads])
        data = model.data_preprocessor(batch, False)
        feats = model.extract_feat(data["inputs"])
        for group, stop in zip(groups, stops):
            statistics = _input_statistics(model, feats, data["data_samples"],
                                           [layers[0] for layers, _ in group], stop)
            for (layers, targets), (mean, variance) in zip(group, statistics):
                for layer, target in zip(layers, targets):
                    normal(layer.weight, target / (mean.numel() * variance) ** 0.5)
                    layer.bias.copy_(-layer.weight.reshape(len(layer.weight), -1) @ mean)
    return model


class _Enough(Exception):
    """Ends a reference run whose remaining part measures nothing."""


def _input_statistics(model, feats, samples, layers, stop=()):
    """Mean (per input channel) and variance (averaged) of the input of each of ``layers`` in
    a run of the heads on ``feats``, ended when a module of ``stop`` starts; the heads
    subtract the mean, so that no class or anchor wins everywhere."""
    seen = {id(layer): [] for layer in layers}

    def hook(module, args, out):
        x = args[0].transpose(0, 1).reshape(args[0].shape[1], -1)  # channels first
        seen[id(module)].append(x)

    def end(module, args):
        raise _Enough

    handles = [layer.register_forward_hook(hook) for layer in layers]
    handles += [module.register_forward_pre_hook(end) for module in stop]
    try:
        rpn = model.rpn_head.predict(feats, samples, rescale=False)
        model.roi_head.predict(feats, rpn, samples, rescale=True)
    except _Enough:
        pass
    finally:
        for handle in handles:
            handle.remove()
    out = []
    for layer in layers:
        x = torch.cat(seen[id(layer)], dim=1)
        mean = x.mean(dim=1)
        out.append((mean, float((x - mean[:, None]).pow(2).mean())))
    return out


def pipeline_inputs(cfg, image_rgb):
    """mmdet's test pipeline (resize with OpenCV, pack) on an RGB uint8 array: a batch dict."""
    from mmcv.transforms import Compose

    scale = next(s["scale"] for s in cfg.test_pipeline if s["type"] == "Resize")
    pipeline = Compose([
        dict(type="mmdet.LoadImageFromNDArray"),
        dict(type="Resize", scale=scale, keep_ratio=True),
        dict(type="PackDetInputs",
             meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
    ])
    data = pipeline(dict(img=np.ascontiguousarray(image_rgb[:, :, ::-1]), img_id=0))
    return {"inputs": [data["inputs"]], "data_samples": [data["data_samples"]]}


def run_stages(model, batch, dtype=torch.float32, proposals=None):
    """Network input, RPN proposals and final detections of mmdet's detector, stage by stage.

    ``proposals`` (an ``InstanceData``) replaces the RPN's own; ``dtype`` float64 runs the
    whole reference in double precision (masks pasted in float64 too).
    """
    from mmdet.models.roi_heads.mask_heads import fcn_mask_head

    pasting = fcn_mask_head._do_paste_mask
    with torch.no_grad():
        data = model.data_preprocessor(batch, False)
        inputs, samples = data["inputs"].to(dtype), data["data_samples"]
        model.to(dtype)
        if dtype == torch.float64:
            fcn_mask_head._do_paste_mask = _paste_mask_float64
        try:
            feats = model.extract_feat(inputs)
            rpn = model.rpn_head.predict(feats, samples, rescale=False)
            if proposals is not None:
                rpn = [proposals]
            dets = model.roi_head.predict(feats, rpn, samples, rescale=True)
        finally:
            fcn_mask_head._do_paste_mask = pasting
            model.to(torch.float32)
    return inputs.float().numpy(), rpn[0], dets[0]


def _paste_mask_float64(masks, boxes, img_h, img_w, skip_empty=True):
    """mmdet's ``_do_paste_mask`` (CPU path, one box at a time) in float64: mmdet's own casts
    its sampling grid to float32, which ``grid_sample`` refuses beside float64 masks."""
    x0_int = int(max(torch.floor(boxes[:, 0].min()) - 1, 0))
    y0_int = int(max(torch.floor(boxes[:, 1].min()) - 1, 0))
    x1_int = int(min(torch.ceil(boxes[:, 2].max()) + 1, img_w))
    y1_int = int(min(torch.ceil(boxes[:, 3].max()) + 1, img_h))
    x0, y0, x1, y1 = torch.split(boxes.double(), 1, dim=1)
    img_y = torch.arange(y0_int, y1_int, dtype=torch.float64) + 0.5
    img_x = torch.arange(x0_int, x1_int, dtype=torch.float64) + 0.5
    img_y = torch.nan_to_num((img_y - y0) / (y1 - y0) * 2 - 1, posinf=0.0, neginf=0.0)
    img_x = torch.nan_to_num((img_x - x0) / (x1 - x0) * 2 - 1, posinf=0.0, neginf=0.0)
    n = masks.shape[0]
    gx = img_x[:, None, :].expand(n, img_y.size(1), img_x.size(1))
    gy = img_y[:, :, None].expand(n, img_y.size(1), img_x.size(1))
    grid = torch.stack([gx, gy], dim=3)
    pasted = torch.nn.functional.grid_sample(masks.double(), grid, align_corners=False)
    return pasted[:, 0], (slice(y0_int, y1_int), slice(x0_int, x1_int))


def train_config(name, layers=None, scale=(1333, 800), sampler="PseudoSampler",
                 sampling_ratio=2, rpn_proposal=None):
    """``detector_config`` for training: both samplers of type ``sampler`` (``PseudoSampler``:
    deterministic; None: the config's own), RoIAlign with a fixed ``sampling_ratio``, and
    changes to ``train_cfg.rpn_proposal``."""
    cfg = detector_config(name, layers, scale)
    for stage in ("rpn", "rcnn") if sampler else ():
        cfg.model.train_cfg[stage].sampler = dict(type=sampler)
    roi_head = cfg.model.roi_head
    for extractor in ("bbox_roi_extractor", "mask_roi_extractor"):
        if extractor in roi_head:
            roi_head[extractor].roi_layer.sampling_ratio = sampling_ratio
    cfg.model.train_cfg.rpn_proposal.update(rpn_proposal or {})
    return cfg


def train_inputs(images_rgb, targets, scale):
    """mmdet's train pipeline without flip (``Resize`` keeping the ratio, ``PackDetInputs``)
    on RGB uint8 arrays and their targets (``boxes`` (K, 4) input pixels, ``labels``,
    optional ``masks`` (K, H, W) bool): a batch dict for ``data_preprocessor``."""
    from mmdet.datasets.transforms import PackDetInputs, Resize
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks

    resize = Resize(scale=scale, keep_ratio=True)
    pack = PackDetInputs(meta_keys=("img_id", "ori_shape", "img_shape", "scale_factor"))
    batch = {"inputs": [], "data_samples": []}
    for index, (image, target) in enumerate(zip(images_rgb, targets)):
        height, width = image.shape[:2]
        results = dict(img=np.ascontiguousarray(image[:, :, ::-1]), img_id=index,
                       img_shape=(height, width), ori_shape=(height, width),
                       gt_bboxes=HorizontalBoxes(np.asarray(target["boxes"], np.float32)),
                       gt_bboxes_labels=np.asarray(target["labels"], np.int64),
                       gt_ignore_flags=np.zeros(len(target["labels"]), bool))
        if "masks" in target:
            results["gt_masks"] = BitmapMasks(np.asarray(target["masks"], np.uint8), height,
                                              width)
        data = pack(resize(results))
        batch["inputs"].append(data["inputs"])
        batch["data_samples"].append(data["data_samples"])
    return batch


def loss_and_grads(model, batch, param_names=()):
    """mmdet's own training losses of ``batch`` (per-level lists summed, as mmengine's
    ``parse_losses``) as floats, and the gradients of the total (every term with "loss" in
    its name) with respect to the parameters ``param_names``, as numpy arrays."""
    model.train()
    model.zero_grad()
    data = model.data_preprocessor(batch, True)
    losses = model.loss(data["inputs"], data["data_samples"])
    summed = {k: sum(v) if isinstance(v, (list, tuple)) else v for k, v in losses.items()}
    total = sum(v for k, v in summed.items() if "loss" in k)
    total.backward()
    params = dict(model.named_parameters())
    grads = {name: params[name].grad.detach().numpy().copy() for name in param_names}
    return {k: float(v) for k, v in summed.items()}, grads
