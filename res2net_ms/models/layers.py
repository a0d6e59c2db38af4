"""Small building blocks shared by the Res2Net and DLA networks.

Padding is always explicit (``pad_mode="pad"``) so that every layer computes exactly what its
PyTorch counterpart computes, odd input sizes included.
"""
from mindspore import nn, ops
from mindspore.common.initializer import HeNormal

from .kernels import Pool3x3


def conv2d(in_channels, out_channels, kernel_size, stride=1, dilation=1, groups=1):
    """Bias-free conv with PyTorch-style symmetric padding and the official He-normal init."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, pad_mode="pad", padding=padding,
        dilation=dilation, group=groups, has_bias=False,
        weight_init=HeNormal(mode="fan_out", nonlinearity="relu"),
    )


def batch_norm(channels):
    """BatchNorm with PyTorch defaults (eps 1e-5, PyTorch momentum 0.1 = MindSpore 0.9)."""
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.9)


def stage_pool(stride):
    """The 3x3 average pool applied to the last split of a stage block (padding counted)."""
    return Pool3x3("avg", stride)


def stem_pool():
    """The stem's 3x3 stride-2 max pool (padding 1)."""
    return Pool3x3("max", 2)


class DropPath(nn.Cell):
    """Stochastic depth: drops a sample's residual branch with probability ``drop_prob``."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.keep_prob = 1.0 - drop_prob

    def construct(self, x):
        if not self.training or self.keep_prob == 1.0:
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = ops.floor(self.keep_prob + ops.rand(shape, dtype=x.dtype))
        return x / self.keep_prob * mask


class GlobalAvgPool(nn.Cell):
    """Mean over the spatial axes: (N, C, H, W) -> (N, C)."""

    def construct(self, x):
        return ops.mean(x, (2, 3), False)
