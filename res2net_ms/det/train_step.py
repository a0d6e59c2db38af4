"""A two-stage detector's training losses as ONE graph (mmdetection's
``TwoStageDetector.loss``), and a compiled optimisation step on it.

Everything runs on the device in static shapes, with ops that exist on Ascend as on CPU: the
backbone (frozen stem and stage 1, ``norm_eval``), FPN and RPN head, anchor targets, RPN losses,
proposals (``TopK``, ``NMSWithMask``), R-CNN targets and sampling, RoI features (bilinear
``grid_sample``: :mod:`.roi_extractor` says why not ``ROIAlign``) and the box and mask
losses. The inputs are a padded batch (:func:`~.train_inputs.collate_train`): images
of one fixed size, ground truth padded to a fixed count with a validity mask.
"""
import mindspore as ms
from mindspore import Tensor, nn, ops

from .anchors import device_grid_anchors
from .proposals import RPNProposals
from .roi_loss import StandardRoIHeadLoss
from .rpn_loss import RPNLoss

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

    def _dense(self, images, img_shapes):
        """The pyramid, and per level the RPN's flat logits (N, T_l), deltas (N, T_l, 4),
        anchors (T_l, 4) and valid flags (N, T_l): anchors within each image's padded area
        (mmdetection's ``valid_flags`` of its ``pad_shape``)."""
        feats = self.neck(self.backbone(images))
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
    def construct(self, images, img_shapes, gt_boxes, gt_labels, gt_valid, gt_masks=None):
        feats, logits, deltas, anchors, valid = self._dense(images, img_shapes)
        loss_rpn_cls, loss_rpn_bbox = self.rpn_loss(
            ops.concat(logits, axis=1), ops.concat(deltas, axis=1), ops.concat(anchors),
            ops.concat(valid, axis=1), img_shapes, gt_boxes, gt_valid)
        scores = ()
        for level_logits in logits:
            scores += (ops.sigmoid(level_logits),)
        proposals, proposal_valid = self.proposals(scores, deltas, anchors, img_shapes)
        rcnn, overflow = self.roi_loss(feats, proposals, proposal_valid, gt_boxes, gt_labels,
                                       gt_valid, gt_masks)
        losses = (loss_rpn_cls, loss_rpn_bbox) + rcnn
        total = losses[0]
        for index in self.summed[1:]:
            total = total + losses[index]
        return total, losses, overflow


class TrainStep(nn.Cell):
    """One optimisation step in one graph: the losses, their gradients with respect to the
    optimizer's parameters (the trainable ones: not the frozen stem and stage 1) and the
    update, in training mode. Returns what :class:`TwoStageLoss` returns.

    Args:
        loss_cell: the detector's :meth:`~.two_stage.TwoStageDetector.loss_cell`.
        optimizer: a MindSpore optimizer over ``detector.trainable_params()``.
    """

    def __init__(self, loss_cell, optimizer):
        super().__init__(auto_prefix=False)
        self.loss_cell = loss_cell
        self.optimizer = optimizer
        self.grad_fn = ms.value_and_grad(loss_cell, None, optimizer.parameters, has_aux=True)
        self.set_train(True)

    @ms.jit
    def construct(self, *batch):
        (total, losses, overflow), grads = self.grad_fn(*batch)
        total = ops.depend(total, self.optimizer(grads))
        return total, losses, overflow


def check_overflow(overflow, loss_cell):
    """ValueError when positive RoIs found no mask slot (``overflow`` of the step)."""
    if int(overflow):
        raise ValueError(f"{int(overflow)} positive RoIs found no mask slot (an image has more "
                         f"than {loss_cell.mask_rois}): raise train_cfg['static']"
                         "['mask_rois']")
