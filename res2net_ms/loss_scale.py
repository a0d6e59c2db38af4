"""Loss scaling of the mixed-precision training steps (classification's and the detectors'):
the scale and its good-step count are Parameters, so a training checkpoint holds them."""
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

__all__ = ["LossScale"]

_unscale = ops.MultitypeFuncGraph("unscale")


@_unscale.register("Tensor", "Tensor")
def _unscale_grad(inv_scale, grad):
    return grad * ops.cast(inv_scale, grad.dtype)


class LossScale(nn.Cell):
    """The loss scale (``scale_sense``), fixed or dynamic (mindcv's and MindSpore's rule:
    divide by ``factor`` on overflow, never below 1; multiply after ``window`` good steps).

    Args:
        value: the (initial) scale.
        dynamic: change the scale as above.
        factor, window: the dynamic rule's.
    """

    def __init__(self, value=1.0, dynamic=False, factor=2.0, window=2000):
        super().__init__(auto_prefix=False)
        self.scale_sense = Parameter(Tensor(value, ms.float32), name="scale_sense",
                                     requires_grad=False)
        self.good_steps = Parameter(Tensor(0, ms.int32), name="loss_scale_good_steps",
                                    requires_grad=False)
        self.dynamic = dynamic
        self.factor = factor
        self.window = window
        self.hyper_map = ops.HyperMap()

    def unscale(self, grads):
        """The gradients of the scaled loss, divided by the scale."""
        return self.hyper_map(ops.partial(_unscale, ops.reciprocal(self.scale_sense)), grads)

    def update(self, finite):
        """The scale after a step whose gradients were ``finite`` (or not)."""
        if not self.dynamic:
            return self.scale_sense
        scale = self.scale_sense
        good = ops.select(finite, self.good_steps + 1, ops.zeros_like(self.good_steps))
        grow = good >= self.window
        new_scale = ops.select(finite, ops.select(grow, scale * self.factor, scale),
                               ops.maximum(scale / self.factor, ops.ones_like(scale)))
        good = ops.select(grow, ops.zeros_like(good), good)
        ops.assign(self.good_steps, good)
        return ops.assign(self.scale_sense, new_scale)
