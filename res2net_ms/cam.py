"""Grad-CAM heat maps: where in the image the network found the class.

``python -m res2net_ms.cam IMAGE --model NAME --ckpt_path X --out cam.png [--class K]
[--stage 4]`` writes the image with the heat map of the predicted (or given) class over it.

Grad-CAM (Selvaraju et al., 2017): the feature maps ``A`` of a stage are weighted by the
spatial mean of the gradient of the class logit with respect to them, summed over channels
and clipped at zero. The map covers the centre crop the network saw; it is placed over that
region of the original image, at the image's own size.
"""
import argparse
import os

import mindspore as ms
import numpy as np
from PIL import Image

from .fileio import atomic_write
from .inference import InputError, add_weights_arguments, load_model, read_image
from .process import exit_process, run_command

__all__ = ["grad_cam", "cam_image", "overlay", "main"]


def _stages_after(network, stage):
    """The function from stage ``stage``'s output to the logits (stages 1.. follow each other)."""
    last = len(network.feature_info) - 1

    def head(features):
        x = features
        for index in range(stage + 1, last + 1):
            for cell in network.stage_cells(index):
                x = cell(x)
        return network.forward_head(x)

    return head


def grad_cam(network, inputs, class_index=None, stage=None):
    """Grad-CAM of one preprocessed image ``inputs`` (3, H, W) at stage ``stage``.

    Returns ``(cam, class_index, probability)``: ``cam`` is the (h, w) map of the stage's
    resolution, scaled to [0, 1]; ``class_index`` the given or predicted class. Runs in
    PyNative mode (restored afterwards).
    """
    last = len(network.feature_info) - 1
    stage = last if stage is None else stage
    if not 1 <= stage <= last:
        raise InputError(f"stage must be 1..{last} for this network, got {stage}")
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        network.set_train(False)
        x = ms.Tensor(np.asarray(inputs, np.float32)[None])
        features = network.forward_stages(x)[stage]
        head = _stages_after(network, stage)
        logits = head(features).asnumpy()[0]
        if class_index is None:
            class_index = int(np.argmax(logits))
        if not 0 <= class_index < logits.shape[0]:
            raise InputError(f"class {class_index} out of range: the model has "
                             f"{logits.shape[0]} classes")
        grads = ms.grad(lambda f: head(f)[0, class_index])(features).asnumpy()[0]
    finally:
        ms.set_context(mode=mode)
    weights = grads.mean(axis=(1, 2))
    cam = np.maximum((weights[:, None, None] * features.asnumpy()[0]).sum(axis=0), 0.0)
    cam = cam / cam.max() if cam.max() > 0 else cam
    probs = np.exp(logits - logits.max())
    return cam.astype(np.float32), class_index, float(probs[class_index] / probs.sum())


def _jet(values):
    """Blue (0) to red (1), as the usual "jet" colour map: (h, w) in [0, 1] -> (h, w, 3)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (rgb * 255).astype(np.uint8)


def cam_image(cam, image_size, preprocess):
    """The map at the original image's size: bilinear over the region the centre crop shows
    (which lies inside the image, as ``crop_pct <= 1``), 0 elsewhere.

    ``image_size`` is the original ``(width, height)``.
    """
    width, height = image_size
    left, top, right, bottom = (int(round(v)) for v in preprocess.crop_box(width, height))
    region = Image.fromarray(cam.astype(np.float32), mode="F").resize(
        (max(1, right - left), max(1, bottom - top)), Image.BILINEAR)
    out = np.zeros((height, width), np.float32)
    out[top:bottom, left:right] = np.asarray(region)[:bottom - top, :right - left]
    return np.clip(out, 0.0, 1.0)


def overlay(image, heat, alpha=0.5):
    """``image`` (PIL RGB) with the heat map blended over it where the map is defined."""
    base = np.asarray(image, np.float32)
    colours = _jet(heat).astype(np.float32)
    mixed = base * (1 - alpha) + colours * alpha
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))


def _save(image, path):
    fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise InputError(f"cannot tell the image format of {path}: end it with .png or .jpg")
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


def run(image_path, out, model=None, ckpt_path=None, pretrained=False, class_index=None,
        stage=None, labels=None, ema=None):
    """Write ``image_path`` with its Grad-CAM over it to ``out``; return what was drawn:
    ``{"cam": (H, W) map at the image's size, "class", "label", "probability", "stage"}``."""
    if ckpt_path and str(ckpt_path).lower().endswith(".mindir"):
        raise InputError("Grad-CAM needs the network's gradients: pass the checkpoint, not an "
                         "exported .mindir")
    loaded = load_model(model, ckpt_path, pretrained, labels=labels, ema=ema)
    image = read_image(image_path)
    stage = len(loaded.network.feature_info) - 1 if stage is None else stage
    cam, index, prob = grad_cam(loaded.network, loaded.preprocess(image), class_index, stage)
    heat = cam_image(cam, image.size, loaded.preprocess)
    _save(overlay(image, heat), out)
    return {"cam": heat, "class": index, "label": loaded.labels[index], "probability": prob,
            "stage": stage, "map_size": cam.shape}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m res2net_ms.cam",
                                description="Grad-CAM of an image: the heat map of a class.")
    p.add_argument("image")
    add_weights_arguments(p)
    p.add_argument("--out", required=True, help="image to write (.png, .jpg)")
    p.add_argument("--class", dest="class_index", type=int,
                   help="class index (default: the predicted class)")
    p.add_argument("--stage", type=int,
                   help="stage whose features are weighted (default: the last; 1 is the "
                        "first after the stem)")
    p.add_argument("--labels", help="class names, one a line")
    return p


def _command(args):
    result = run(args.image, args.out, args.model, args.ckpt_path, args.pretrained,
                 args.class_index, args.stage, args.labels, args.ema)
    h, w = result["map_size"]
    print(f"wrote {args.out}: Grad-CAM of class {result['class']} ({result['label']}, "
          f"{100 * result['probability']:.2f}%) at stage {result['stage']} ({h}x{w} map)")


def main(argv=None):
    return run_command(build_parser, _command, argv)


if __name__ == "__main__":
    exit_process(main())
