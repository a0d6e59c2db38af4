"""mmdetection 3.3.0 itself as the reference detector, runnable on this CPU without mmcv's
compiled ops.

mmcv-lite lacks ``mmcv._ext``; mmcv's ops only check at import that the names they use exist,
and mmdet's Faster R-CNN calls two of them: ``nms`` and ``roi_align_forward``. The stand-in
below routes those to ``torchvision.ops`` (exact for ``offset=0``, average mode) and makes
every other name exist but refuse to run. Used by ``tests/test_det_parity.py`` and
``benchmarks/detect_bench.py``; needs the test extra and ``requirements-mmdet.txt``.
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


def import_mmdet():
    """Import mmdet (and register its modules) with the stand-in in place; None if absent."""
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
    """The config of mmdet's Faster R-CNN R2-101-FPN (2x COCO), test pipeline included.

    ``layers`` (blocks per stage) gives a reduced-depth backbone; ``scale`` the resize target.
    """
    import mmdet
    from mmengine.config import Config

    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", "res2net",
                        "faster-rcnn_res2net-101_fpn_2x_coco.py")
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


def randomise(model, batch, seed=0, rpn_logit_std=2.0, rpn_delta_std=0.1, cls_logit_std=2.0,
              reg_delta_std=0.5):
    """Random weights that exercise every part: BN with non-trivial statistics, and head
    outputs of chosen spread on ``batch`` (scores far apart, so that rounding cannot reorder
    them: small random heads give near-tied scores, and then float32 and float64 disagree)."""
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
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                normal(m.weight, (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    normal(m.bias, 0.1)
        rpn, bbox = model.rpn_head, model.roi_head.bbox_head
        for layers, targets in (((rpn.rpn_cls, rpn.rpn_reg), (rpn_logit_std, rpn_delta_std)),
                                ((bbox.fc_cls, bbox.fc_reg), (cls_logit_std, reg_delta_std))):
            mean, variance = _input_statistics(model, batch, layers[0])
            for layer, target in zip(layers, targets):
                normal(layer.weight, target / (mean.numel() * variance) ** 0.5)
                layer.bias.copy_(-layer.weight.reshape(len(layer.weight), -1) @ mean)
    return model


def _input_statistics(model, batch, layer):
    """Mean (per input channel) and variance (averaged) of the input of ``layer`` on ``batch``;
    the heads subtract the mean, so that no class or anchor wins everywhere."""
    seen = []

    def hook(module, args, out):
        x = args[0].transpose(0, 1).reshape(args[0].shape[1], -1)  # channels first
        seen.append(x)

    handle = layer.register_forward_hook(hook)
    try:
        run_stages(model, batch)
    finally:
        handle.remove()
    x = torch.cat(seen, dim=1)
    mean = x.mean(dim=1)
    return mean, float((x - mean[:, None]).pow(2).mean())


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
    whole reference in double precision.
    """
    with torch.no_grad():
        data = model.data_preprocessor(batch, False)
        inputs, samples = data["inputs"].to(dtype), data["data_samples"]
        model.to(dtype)
        feats = model.extract_feat(inputs)
        rpn = model.rpn_head.predict(feats, samples, rescale=False)
        if proposals is not None:
            rpn = [proposals]
        dets = model.roi_head.predict(feats, rpn, samples, rescale=True)
        model.to(torch.float32)
    return inputs.float().numpy(), rpn[0], dets[0]
