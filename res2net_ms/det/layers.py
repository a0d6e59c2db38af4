"""Small pieces the heads share: mmcv's ``ConvModule`` (conv + ReLU, parameters under
``.conv`` as in mmdetection's checkpoints) and a runner that feeds a compiled head a fixed
number of RoIs at a time, so that it compiles once whatever the count; the pyramid cast to
float32 for the heads."""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

__all__ = ["ConvModule", "float32", "run_in_chunks", "softmax"]


class ConvModule(nn.Cell):
    """A biased conv (same padding) followed by ReLU, named as mmcv's ``ConvModule``."""

    def __init__(self, in_channels, out_channels, kernel_size, relu=True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, pad_mode="pad",
                              padding=kernel_size // 2, has_bias=True)
        self.relu = nn.ReLU() if relu else None

    def construct(self, x):
        x = self.conv(x)
        if self.relu is not None:
            x = self.relu(x)
        return x


def run_in_chunks(cell, inputs, chunk):
    """The compiled ``cell`` applied to ``inputs`` (numpy arrays with one row per RoI, at
    least one), in zero-padded chunks of ``chunk`` rows; a tuple of numpy outputs."""
    count = len(inputs[0])
    outputs = []
    for start in range(0, count, chunk):
        rows = min(chunk, count - start)
        padded = []
        for x in inputs:
            block = np.zeros((chunk,) + x.shape[1:], np.float32)
            block[:rows] = x[start:start + rows]
            padded.append(Tensor(block))
        out = cell(*padded)
        out = out if isinstance(out, tuple) else (out,)
        outputs.append([o.asnumpy()[:rows] for o in out])
    return tuple(np.concatenate(parts) for parts in zip(*outputs))


def softmax(logits):
    """Softmax over the last axis in float32, as PyTorch computes it (max subtracted)."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def float32(feats):
    """The pyramid in float32: under mixed precision a float16 backbone and FPN feed heads,
    targets and losses that stay in float32."""
    out = ()
    for feat in feats:
        out += (ops.cast(feat, ms.float32),)
    return out
