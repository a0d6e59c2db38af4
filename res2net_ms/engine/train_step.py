"""The training step: loss, scaled gradients, reduction, clipping, update, EMA, built from the
run's recipe (mixed precision, loss, learning-rate table, optimizer), as mindcv's
``create_trainer``.

One cell does the whole step so that graph mode compiles it once and the Python loop only
feeds batches. Every piece of state it changes (loss scale, EMA weights, counters) is a
Parameter, so a checkpoint of :attr:`TrainParts.params` is a complete training state.
"""
from dataclasses import dataclass, field

import mindspore as ms
import numpy as np
from mindcv.loss import create_loss
from mindcv.optim import create_optimizer
from mindcv.scheduler import create_scheduler
from mindcv.utils import amp as mindcv_amp
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from ..compile_cache import compile_cell, lr_table_for_graph
from ..config import ConfigError
from ..loss_scale import LossScale
from ..process import release_free_memory

__all__ = ["NetWithLoss", "EMA", "TrainStep", "TrainParts", "build_train_step",
           "mixed_precision", "state_parameters"]

_ema_update = ops.MultitypeFuncGraph("ema_update")
_accumulate = ops.MultitypeFuncGraph("accumulate")


@_accumulate.register("Tensor", "Tensor", "Tensor")
def _accumulate_grad(inv_steps, total, grad):
    return ops.assign_add(total, ops.cast(grad, total.dtype) * inv_steps)


@_ema_update.register("Tensor", "Tensor", "Tensor")
def _ema_assign(decay, ema_value, value):
    return ops.assign(ema_value, ema_value * decay + ops.cast(value, ema_value.dtype) * (1 - decay))


class NetWithLoss(nn.Cell):
    """Network then loss; logits go to float32 first so that AMP O2/O3 losses stay accurate."""

    def __init__(self, network, loss_fn):
        super().__init__(auto_prefix=False)
        self.network = network
        self.loss_fn = loss_fn

    def construct(self, images, labels):
        logits = ops.cast(self.network(images), ms.float32)
        return self.loss_fn(logits, labels)


class EMA(nn.Cell):
    """Exponential moving average of every network parameter, BN statistics included.

    The decay warms up as ``decay * (1 - exp(-updates / 2000))`` (mindcv's rule), so early
    averages follow the weights instead of the random initialisation. EMA parameters are
    named ``ema.<name>``, as in mindcv training checkpoints.
    """

    def __init__(self, network, decay=0.9999):
        super().__init__(auto_prefix=False)
        self.decay = decay
        self.weights = ParameterTuple(list(network.get_parameters()))
        self.ema_weights = self.weights.clone(prefix="ema", init="same")
        for p in self.ema_weights:
            p.requires_grad = False
        self.updates = Parameter(Tensor(0.0, ms.float32), name="ema_updates", requires_grad=False)
        self.hyper_map = ops.HyperMap()

    def construct(self):
        updates = ops.assign_add(self.updates, ops.ones_like(self.updates))
        decay = self.decay * (1 - ops.exp(-updates / 2000))
        return self.hyper_map(ops.partial(_ema_update, decay), self.ema_weights, self.weights)


class TrainStep(nn.Cell):
    """``loss = step(images, labels)``: one optimisation step.

    Args:
        net_with_loss: cell returning the scalar loss.
        optimizer: a MindSpore optimizer over the trainable parameters.
        loss_scale: the (initial) loss scale.
        dynamic_loss_scale: shrink the scale by ``scale_factor`` on overflow, grow it after
            ``scale_window`` good steps.
        skip_overflow: skip updates whose gradients are not finite (always with a dynamic
            scale; with a fixed one, mindcv's ``drop_overflow_update``).
        clip_norm: clip gradients to this global norm (0: no clipping).
        ema: an :class:`EMA` to update after every applied step, or None.
        distributed: average gradients over the ranks (data parallel) before anything else.
        group_size: number of ranks.
        accumulation_steps: average the gradients of this many batches, then update once
            (mindcv's ``gradient_accumulation_steps``: the learning rate advances every batch,
            the ranks reduce only at the update).

    Returns ``(loss, finite, loss_scale)``: ``finite`` is False when the step was skipped.
    """

    def __init__(self, net_with_loss, optimizer, loss_scale=1.0, dynamic_loss_scale=False,
                 scale_factor=2.0, scale_window=2000, skip_overflow=False, clip_norm=0.0,
                 ema=None, distributed=False, group_size=1, accumulation_steps=1):
        super().__init__(auto_prefix=False)
        self.network = net_with_loss
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()
        self.loss_scale = LossScale(loss_scale, dynamic_loss_scale, scale_factor, scale_window)
        self.skip_overflow = skip_overflow or dynamic_loss_scale
        self.clip = clip_norm > 0
        self.clip_norm = clip_norm
        self.ema = ema
        self.use_ema = ema is not None
        self.distributed = distributed
        if distributed:
            self.grad_reducer = nn.DistributedGradReducer(self.weights, mean=True,
                                                          degree=group_size)
        else:
            self.grad_reducer = nn.Identity()
        self.accumulation_steps = accumulation_steps
        if accumulation_steps > 1:
            self.accum = self.weights.clone(prefix="accum", init="zeros")
            self.micro_steps = Parameter(Tensor(0, ms.int32), name="accum_micro_steps",
                                         requires_grad=False)
            self.inv_steps = Tensor(1.0 / accumulation_steps, ms.float32)

    def step_state(self):
        """The step's own state: the loss scale, and the gradient sums between updates."""
        state = list(self.loss_scale.get_parameters())
        if self.accumulation_steps > 1:
            state += list(self.accum) + [self.micro_steps]
        return state

    def _apply(self, loss, grads):
        """Reduce over the ranks, unscale, check, clip, update the weights and the EMA."""
        grads = self.loss_scale.unscale(self.grad_reducer(grads))
        finite = ms.amp.all_finite(grads) if self.skip_overflow else ops.ones((), ms.bool_)
        if self.clip:
            grads = ops.clip_by_global_norm(grads, self.clip_norm)
        scale = self.loss_scale.update(finite)
        if self.skip_overflow:
            if finite:
                loss = ops.depend(loss, self.optimizer(grads))
                if self.use_ema:
                    loss = ops.depend(loss, self.ema())
        else:
            loss = ops.depend(loss, self.optimizer(grads))
            if self.use_ema:
                loss = ops.depend(loss, self.ema())
        return loss, finite, scale

    def construct(self, images, labels):
        loss = self.network(images, labels)
        sens = ops.fill(loss.dtype, loss.shape, ops.cast(self.loss_scale.scale_sense,
                                                         loss.dtype))
        grads = self.grad(self.network, self.weights)(images, labels, sens)
        if self.accumulation_steps == 1:
            return self._apply(loss, grads)
        loss = ops.depend(loss, self.hyper_map(ops.partial(_accumulate, self.inv_steps),
                                               self.accum, grads))
        micro = ops.assign_add(self.micro_steps, ops.ones_like(self.micro_steps))
        finite, scale = ops.ones((), ms.bool_), self.loss_scale.scale_sense
        if micro >= self.accumulation_steps:
            loss, finite, scale = self._apply(loss, self.accum)
            loss = ops.depend(loss, self.hyper_map(ops.assign, self.accum,
                                                   self.hyper_map(ops.zeros_like, self.accum)))
            loss = ops.depend(loss, ops.assign(self.micro_steps,
                                               ops.zeros_like(self.micro_steps)))
        else:
            loss = ops.depend(loss, self.optimizer.get_lr())  # the schedule advances per batch
        return loss, finite, scale


def state_parameters(network, optimizer=None, train_step=None, ema=None):
    """Every Parameter a training checkpoint must hold, without duplicates.

    The learning-rate table is left out: it is rebuilt from the config, and the position in
    it is the optimizer's ``global_step``.
    """
    params, seen = [], set()

    def add(p):
        if p.name not in seen:
            seen.add(p.name)
            params.append(p)

    for p in network.get_parameters():
        add(p)
    if optimizer is not None:
        skip = {id(p) for p in network.get_parameters()}
        lr = getattr(optimizer, "learning_rate", None)
        skip |= {id(p) for p in lr.get_parameters()} if isinstance(lr, nn.Cell) else {id(lr)}
        for _, p in optimizer.parameters_and_names():
            if id(p) not in skip:
                add(p)
    if train_step is not None:
        for p in train_step.step_state():
            add(p)
    if ema is not None:
        for p in ema.ema_weights:
            add(p)
        add(ema.updates)
    return params


@dataclass
class TrainParts:
    """What the epoch loop drives: the compiled step and the state a checkpoint holds."""

    train_step: TrainStep
    optimizer: object
    ema: object
    params: list
    lr_values: np.ndarray
    compiled: bool = field(default=False, init=False)

    def step(self, images, labels):
        """One training step. The first compiles the graph (or loads it from the compile
        cache), then returns the compiler's freed heap to the system before the activations
        are allocated (lower peak memory)."""
        if not self.compiled:
            compile_cell(self.train_step, images, labels, what="training step")
            release_free_memory()
            self.compiled = True
        return self.train_step(images, labels)

    def current_lr(self):
        """The learning rate of the optimizer's last step, by its own step count (skipped
        steps do not advance it). Reading it waits for the device."""
        step = int(self.optimizer.global_step.asnumpy().reshape(-1)[0])
        return float(self.lr_values[min(max(step - 1, 0), len(self.lr_values) - 1)])


def mixed_precision(network, level, cast_list=None):
    """mindcv's AMP levels; ``cast_list`` (e.g. ``"[nn.BatchNorm2d]"``) replaces mindcv's
    white (O1) or black (O2) list. mindcv ``eval``s that text; here only ``nn.<Cell>``
    names are accepted."""
    if cast_list is None or level in ("O0", "O3"):
        mindcv_amp.auto_mixed_precision(network, level)
        return
    names = [n.strip() for n in cast_list.strip().strip("[]()").split(",") if n.strip()]
    cells = []
    for name in names:
        cell = getattr(nn, name[len("nn."):] if name.startswith("nn.") else name, None)
        if not (isinstance(cell, type) and issubclass(cell, nn.Cell)):
            raise ConfigError(f"amp_cast_list: '{name}' is not a mindspore.nn cell class")
        cells.append(cell)
    patch = mindcv_amp._auto_white_list if level == "O1" else mindcv_amp._auto_black_list
    patch(network, tuple(cells))


def build_train_step(args, network, steps_per_epoch, group_size):
    """AMP, loss, learning-rate table, optimizer, EMA and the compiled :class:`TrainStep`."""
    mixed_precision(network, args.amp_level, args.amp_cast_list)
    loss_fn = create_loss(name=args.loss, label_smoothing=args.label_smoothing,
                          reduction=args.reduction)
    lr_table = create_scheduler(
        steps_per_epoch, scheduler=args.scheduler, lr=args.lr, min_lr=args.min_lr,
        warmup_epochs=args.warmup_epochs, warmup_factor=args.warmup_factor,
        decay_epochs=args.decay_epochs, decay_rate=args.decay_rate,
        milestones=args.multi_step_decay_milestones, num_epochs=args.epoch_size,
        num_cycles=args.num_cycles, cycle_decay=args.cycle_decay,
        lr_epoch_stair=args.lr_epoch_stair)
    optimizer = create_optimizer(
        network, opt=args.opt, lr=lr_table_for_graph(lr_table).tolist(),
        weight_decay=args.weight_decay, momentum=args.momentum, nesterov=args.use_nesterov,
        weight_decay_filter=args.weight_decay_filter, layer_decay=args.layer_decay,
        loss_scale=1.0, eps=args.eps)
    ema = EMA(network, args.ema_decay) if args.ema else None
    train_step = TrainStep(
        NetWithLoss(network, loss_fn), optimizer, loss_scale=args.loss_scale,
        dynamic_loss_scale=args.loss_scale_type == "dynamic",
        scale_factor=args.loss_scale_factor, scale_window=args.scale_window,
        skip_overflow=args.drop_overflow_update,
        clip_norm=args.clip_value if args.clip_grad else 0.0, ema=ema,
        distributed=group_size > 1, group_size=group_size,
        accumulation_steps=args.gradient_accumulation_steps)
    parts = TrainParts(train_step, optimizer, ema,
                       state_parameters(network, optimizer, train_step, ema),
                       np.asarray(lr_table, dtype=np.float64))
    train_step.set_train(True)
    return parts
