"""A two-stage detector's training losses as ONE graph (mmdetection's
``TwoStageDetector.loss``), and a compiled optimisation step on it.

Everything runs on the device in static shapes, with ops that exist on Ascend as on CPU: the
backbone (frozen stem and stage 1, ``norm_eval``), FPN and RPN head, anchor targets, RPN losses,
proposals (``TopK``, ``NMSWithMask``), R-CNN targets and sampling, RoI features (bilinear
``grid_sample``: :mod:`.roi_extractor` says why not ``ROIAlign``) and the box and mask
losses. The inputs are a padded batch (:meth:`TwoStageLoss.inputs`): images of one fixed
size, ground truth padded to a fixed count with a validity mask, and the samplers' random keys.
"""
import math

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..loss_scale import LossScale
from .anchors import device_grid_anchors
from .layers import float32
from .proposals import RPNProposals
from .roi_loss import StandardRoIHeadLoss
from .rpn_loss import RPNLoss
from .train_inputs import collate_train

__all__ = ["LOSS_NAMES", "TwoStageLoss", "TrainStep", "check_overflow"]

LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "acc", "loss_bbox", "loss_mask")


class TwoStageLoss(nn.Cell):
    """``(total, losses, overflow)`` of a padded batch: mmdetection's loss terms
    (:attr:`names`; ``acc`` is not in the total), and the count of positive RoIs left out of
    the mask loss (more than ``train_cfg["static"]["mask_rois"]`` in an image).

    Args:
        detector: a :class:`~.two_stage.TwoStageDetector` with a standard RoI head (its
            parameters keep their names: this cell adds no prefix).
        train_cfg: mmdetection's ``train_cfg`` (``rpn``, ``rpn_proposal``, ``rcnn``) and our
            ``static`` shapes (``mask_rois``).
        sampling_ratio: RoIAlign samples per bin and axis.
    """

    def __init__(self, detector, train_cfg, sampling_ratio=2):
        super().__init__(auto_prefix=False)
        if getattr(detector.roi_head, "num_stages", 1) != 1:
            raise ValueError("training is implemented for one-stage RoI heads (Faster and Mask "
                             "R-CNN), not for cascades")
        self.backbone = detector.backbone
        self.neck = detector.neck
        self.rpn_head = detector.rpn_head
        self.data_preprocessor = detector.data_preprocessor
        self.max_gts = train_cfg["static"]["max_gts"]
        self.num_classes = detector.roi_head.bbox_head.num_classes
        generator = detector.rpn_head.anchor_generator
        self.strides = generator.strides
        self.base_anchors = tuple(Tensor(generator.base_anchors(s)) for s in self.strides)
        self.pad_size_divisor = float(detector.data_preprocessor.pad_size_divisor)
        coder = detector.rpn_head.coder
        if coder.means.any():
            raise ValueError("the RPN's box coder has non-zero means: not implemented in "
                             "training")
        stds = tuple(float(s) for s in coder.stds)
        self.rpn_loss = RPNLoss(train_cfg["rpn"], stds)
        self.proposals = RPNProposals(**train_cfg["rpn_proposal"], stds=stds)
        self.roi_loss = StandardRoIHeadLoss(detector.roi_head, train_cfg["rcnn"],
                                            sampling_ratio, train_cfg["static"]["mask_rois"])
        self.with_mask = detector.roi_head.with_mask
        self.names = LOSS_NAMES if self.with_mask else LOSS_NAMES[:-1]
        self.summed = tuple(i for i, name in enumerate(self.names) if name != "acc")
        self.mask_rois = self.roi_loss.mask_rois if self.with_mask else None

    def inputs(self, images, targets, seeds=None):
        """The inputs of this cell (Tensors) for RGB uint8 ``images`` and their ``targets``
        (:func:`~.train_inputs.collate_train`), with each image's sampler keys drawn from its
        entry of ``seeds`` (any seed numpy takes; default: its index): the same image with
        the same seed gets the same draw in any batch, on any rank, after any resume."""
        batch = collate_train(self.data_preprocessor, list(images), list(targets),
                              self.max_gts, self.num_classes, self.with_mask)
        seeds = range(len(batch.images)) if seeds is None else seeds
        count = self._num_keys(batch.images.shape[2:])
        batch.sample_keys = np.stack([np.random.RandomState(seed).random_sample(count)
                                      for seed in seeds]).astype(np.float32)
        return batch.tensors()

    def _num_keys(self, canvas):
        """Keys an image needs: one per anchor (RPN), then one per R-CNN prior."""
        levels = [math.ceil(canvas[0] / s) * math.ceil(canvas[1] / s) * len(base)
                  for s, base in zip(self.strides, self.base_anchors)]
        proposals = min(self.proposals.max_per_img, self.proposals.num_candidates(levels))
        return sum(levels) + self.roi_loss.num_priors(proposals, self.max_gts)

    def _dense(self, images, img_shapes):
        """The pyramid, and per level the RPN's flat logits (N, T_l), deltas (N, T_l, 4),
        anchors (T_l, 4) and valid flags (N, T_l): anchors within each image's padded area
        (mmdetection's ``valid_flags`` of its ``pad_shape``)."""
        feats = float32(self.neck(self.backbone(images)))
        logits, deltas = self.rpn_head.forward_logits(feats)
        divisor = self.pad_size_divisor
        pad_shapes = ops.ceil(img_shapes / divisor) * divisor
        flat_logits, flat_deltas, anchors, valid = (), (), (), ()
        for level, stride in enumerate(self.strides):
            num, _, height, width = logits[level].shape
            level_anchors, xs, ys = device_grid_anchors(self.base_anchors[level], height,
                                                        width, stride)
            flat_logits += (logits[level].transpose(0, 2, 3, 1).reshape(num, -1),)
            flat_deltas += (deltas[level].transpose(0, 2, 3, 1).reshape(num, -1, 4),)
            anchors += (level_anchors,)
            valid += ((xs[None] < pad_shapes[:, 1:2]) & (ys[None] < pad_shapes[:, 0:1]),)
        return feats, flat_logits, flat_deltas, anchors, valid

    @ms.jit
    def construct(self, images, img_shapes, gt_boxes, gt_labels, gt_valid, sample_keys,
                  gt_masks=None):
        feats, logits, deltas, level_anchors, valid = self._dense(images, img_shapes)
        anchors = ops.concat(level_anchors)
        num_anchors = anchors.shape[0]
        loss_rpn_cls, loss_rpn_bbox = self.rpn_loss(
            ops.concat(logits, axis=1), ops.concat(deltas, axis=1), anchors,
            ops.concat(valid, axis=1), img_shapes, gt_boxes, gt_valid,
            sample_keys[:, :num_anchors])
        scores = ()
        for level_logits in logits:
            scores += (ops.sigmoid(level_logits),)
        proposals, proposal_valid = self.proposals(scores, deltas, level_anchors, img_shapes)
        rcnn, overflow = self.roi_loss(feats, proposals, proposal_valid, gt_boxes, gt_labels,
                                       gt_valid, sample_keys[:, num_anchors:], gt_masks)
        losses = (loss_rpn_cls, loss_rpn_bbox) + rcnn
        total = losses[0]
        for index in self.summed[1:]:
            total = total + losses[index]
        return total, losses, overflow


class _ScaledLoss(nn.Cell):
    """The loss cell's outputs after its total times the loss scale, the value differentiated
    (gradients flow from the first output only)."""

    def __init__(self, loss_cell):
        super().__init__(auto_prefix=False)
        self.loss_cell = loss_cell

    def construct(self, scale, *batch):
        total, losses, overflow = self.loss_cell(*batch)
        return total * scale, total, losses, overflow


class TrainStep(nn.Cell):
    """One optimisation step in one graph: the losses, their gradients with respect to the
    optimizer's parameters (the trainable ones: not the frozen stem and stage 1) and the
    update, in training mode. Returns what :class:`TwoStageLoss` returns, and whether the
    update was applied (False: skipped for gradients that were not finite).

    Args:
        loss_cell: the detector's :meth:`~.two_stage.TwoStageDetector.loss_cell`.
        optimizer: a MindSpore optimizer over ``detector.trainable_params()``.
        group_size: data-parallel ranks (msrun): the gradients, and the returned losses, are
            averaged over them, so that each rank steps as one device on the global batch.
        ema: a cell updating the moving average of the weights after each update
            (the engine's ``EMA``), or None.
        loss_scale: a :class:`~res2net_ms.loss_scale.LossScale` (mixed precision), or None
            (a fixed scale of 1).
        skip_overflow: skip updates whose gradients are not finite (always with a dynamic
            scale).
    """

    def __init__(self, loss_cell, optimizer, group_size=1, ema=None, loss_scale=None,
                 skip_overflow=False):
        super().__init__(auto_prefix=False)
        self.loss_cell = loss_cell
        self.optimizer = optimizer
        self.loss_scale = loss_scale or LossScale()
        self.skip_overflow = skip_overflow or self.loss_scale.dynamic
        self.grad_fn = ms.value_and_grad(_ScaledLoss(loss_cell), None, optimizer.parameters,
                                         has_aux=True)
        self.ema = ema
        self.use_ema = ema is not None
        self.distributed = group_size > 1
        if self.distributed:
            self.grad_reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True,
                                                          degree=group_size)
            self.all_reduce = ops.AllReduce()
            self.group_size = float(group_size)
        self.set_train(True)

    def step_state(self):
        """The step's own state (the loss scale), for the training checkpoint."""
        return list(self.loss_scale.get_parameters())

    def _average(self, total, losses, overflow):
        """The losses averaged, and the overflow summed, over the ranks."""
        total = self.all_reduce(total) / self.group_size
        averaged = ()
        for value in losses:
            averaged += (self.all_reduce(value) / self.group_size,)
        overflow = self.all_reduce(overflow.astype(ms.float32)).astype(ms.int32)
        return total, averaged, overflow

    @ms.jit
    def construct(self, *batch):
        (_, total, losses, overflow), grads = self.grad_fn(self.loss_scale.scale_sense, *batch)
        if self.distributed:
            grads = self.grad_reducer(grads)
            total, losses, overflow = self._average(total, losses, overflow)
        grads = self.loss_scale.unscale(grads)
        if not self.skip_overflow:
            return self._update(total, grads), losses, overflow, ops.ones((), ms.bool_)
        applied = ms.amp.all_finite(grads)
        total = ops.depend(total, self.loss_scale.update(applied))
        if applied:
            total = self._update(total, grads)
        return total, losses, overflow, applied

    def _update(self, total, grads):
        total = ops.depend(total, self.optimizer(grads))
        if self.use_ema:
            total = ops.depend(total, self.ema())
        return total


def check_overflow(overflow, loss_cell):
    """ValueError when positive RoIs found no mask slot (``overflow`` of the step)."""
    if int(overflow):
        raise ValueError(f"{int(overflow)} positive RoIs found no mask slot (an image has more "
                         f"than {loss_cell.mask_rois}): raise train_cfg['static']"
                         "['mask_rois']")
