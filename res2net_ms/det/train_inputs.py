"""A detector's training batch: mmdetection's train pipeline (keep-ratio ``Resize`` of the
image, its boxes and masks; no flip) and ``DetDataPreprocessor`` (normalise, pad), in static
shapes: every image padded to the batch's fixed canvas
(:meth:`~.preprocess.DetDataPreprocessor.train_canvas`), the ground truth to a fixed count
with a validity mask.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
from mindspore import Tensor

from .preprocess import resize_keep_ratio, to_rgb_uint8

__all__ = ["TrainBatch", "collate_train", "resize_masks", "check_target"]


@dataclass
class TrainBatch:
    """A padded batch, the inputs of :class:`~.train_step.TwoStageLoss` in its order."""

    images: np.ndarray      # (N, 3, H, W) float32, normalised, zero-padded to the canvas
    img_shapes: np.ndarray  # (N, 2) float32 height, width of each resized image
    gt_boxes: np.ndarray    # (N, G, 4) float32 x1, y1, x2, y2 in resized pixels
    gt_labels: np.ndarray   # (N, G) int32
    gt_valid: np.ndarray    # (N, G) bool: which gt rows are real
    gt_masks: Optional[np.ndarray] = None  # (N, G, H, W) uint8 at the canvas size
    sample_keys: Optional[np.ndarray] = None  # (N, S) float32: the samplers' random draws

    def tensors(self):
        arrays = [self.images, self.img_shapes, self.gt_boxes, self.gt_labels, self.gt_valid,
                  self.sample_keys]
        if self.gt_masks is not None:
            arrays.append(self.gt_masks)
        return tuple(Tensor(a) for a in arrays)


def resize_masks(masks, height, width):
    """(K, h, w) masks resized to (K, height, width) by nearest neighbour exactly as OpenCV's
    ``INTER_NEAREST`` (mmcv's ``imresize(..., 'nearest')``): source index
    floor(dst * (1 / (dst_size / src_size))) in double precision, as its ``resizeNN``."""
    src_h, src_w = masks.shape[1:]
    rows = np.floor(np.arange(height) * (1.0 / (height / src_h))).astype(np.int64)
    cols = np.floor(np.arange(width) * (1.0 / (width / src_w))).astype(np.int64)
    return masks[:, np.minimum(rows, src_h - 1)[:, None], np.minimum(cols, src_w - 1)[None, :]]


def check_target(target, image_shape, num_classes, index, with_mask):
    """``(boxes, labels, masks)`` of one image's target dict, as float32 (K, 4), int32 (K,)
    and bool (K, H, W) (None without masks); ValueError naming the image and the problem."""
    where = f"target {index}"
    if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
        raise ValueError(f"{where}: expected a dict with 'boxes' (K, 4) and 'labels' (K,)"
                         + (" and 'masks' (K, H, W)" if with_mask else ""))
    boxes = np.asarray(target["boxes"], np.float32).reshape(-1, 4) \
        if np.size(target["boxes"]) else np.zeros((0, 4), np.float32)
    labels = np.asarray(target["labels"]).reshape(-1)
    if np.asarray(target["boxes"]).size % 4 or len(labels) != len(boxes):
        raise ValueError(f"{where}: 'boxes' must be (K, 4) and 'labels' (K,), got "
                         f"{np.shape(target['boxes'])} and {np.shape(target['labels'])}")
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] <= boxes[:, 0]) | (
        boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        k = int(np.nonzero(bad)[0][0])
        raise ValueError(f"{where}: box {k} {boxes[k].tolist()} is not x1, y1, x2, y2 with "
                         "x2 > x1 and y2 > y1")
    if len(labels) and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0
                        or labels.max() >= num_classes):
        raise ValueError(f"{where}: labels must be integers in 0..{num_classes - 1}, got "
                         f"{labels.min()}..{labels.max()}")
    masks = None
    if with_mask:
        if "masks" not in target:
            raise ValueError(f"{where}: a mask detector needs 'masks' (K, H, W)")
        masks = np.asarray(target["masks"]).astype(bool)
        if masks.shape != (len(boxes),) + tuple(image_shape):
            raise ValueError(f"{where}: 'masks' must be (K, H, W) = "
                             f"{(len(boxes),) + tuple(image_shape)}, got {masks.shape}")
    return boxes, labels.astype(np.int32), masks


def collate_train(preprocessor, images, targets, max_gts, num_classes, with_mask):
    """The :class:`TrainBatch` of RGB uint8 ``images`` and their ``targets`` (dicts of
    ``boxes`` (K, 4) x1, y1, x2, y2 in input pixels, ``labels`` (K,), with masks ``masks``
    (K, H, W) bool), as mmdetection's train pipeline without flip: boxes times the scale
    factors (float32), clipped to the resized image; masks resized by nearest neighbour;
    images normalised; all zero-padded to the canvas, the gt to ``max_gts`` rows."""
    if len(images) != len(targets) or not images:
        raise ValueError(f"expected as many targets as images (at least one), got "
                         f"{len(images)} images and {len(targets)} targets")
    images = [to_rgb_uint8(image) for image in images]
    checked = [check_target(t, image.shape[:2], num_classes, i, with_mask)
               for i, (image, t) in enumerate(zip(images, targets))]
    counts = [len(boxes) for boxes, _, _ in checked]
    if max(counts) > max_gts:
        raise ValueError(f"target {counts.index(max(counts))} has {max(counts)} boxes, more "
                         f"than the {max_gts} a batch holds: raise train_cfg['static']"
                         "['max_gts']")
    height, width = preprocessor.train_canvas([image.shape[:2] for image in images])
    num = len(images)
    batch = TrainBatch(np.zeros((num, 3, height, width), np.float32),
                       np.zeros((num, 2), np.float32), np.zeros((num, max_gts, 4), np.float32),
                       np.zeros((num, max_gts), np.int32), np.zeros((num, max_gts), bool),
                       np.zeros((num, max_gts, height, width), np.uint8) if with_mask else None)
    for i, (image, (boxes, labels, masks)) in enumerate(zip(images, checked)):
        small, (w_scale, h_scale) = resize_keep_ratio(image, preprocessor.scale)
        new_h, new_w = small.shape[:2]
        batch.images[i, :, :new_h, :new_w] = preprocessor.normalize(small)
        batch.img_shapes[i] = new_h, new_w
        scaled = boxes * np.float32([w_scale, h_scale, w_scale, h_scale])
        scaled[:, 0::2] = np.clip(scaled[:, 0::2], 0, np.float32(new_w))
        scaled[:, 1::2] = np.clip(scaled[:, 1::2], 0, np.float32(new_h))
        flat = (scaled[:, 2] <= scaled[:, 0]) | (scaled[:, 3] <= scaled[:, 1])
        if flat.any():
            raise ValueError(f"target {i}: box {int(np.nonzero(flat)[0][0])} lies outside the "
                             f"image ({image.shape[1]}x{image.shape[0]} pixels)")
        count = len(boxes)
        batch.gt_boxes[i, :count] = scaled
        batch.gt_labels[i, :count] = labels
        batch.gt_valid[i, :count] = True
        if with_mask and count:
            batch.gt_masks[i, :count, :new_h, :new_w] = resize_masks(masks, new_h, new_w)
    return batch

