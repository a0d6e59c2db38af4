"""The Res2Net bottleneck, shared by every network in the zoo."""
from mindspore import nn, ops

from .layers import DropPath, batch_norm, conv2d, stage_pool


class Bottle2neck(nn.Cell):
    """Res2Net bottleneck: 1x1 conv, a hierarchy of 3x3 convs over ``scale`` splits, 1x1 conv.

    This is the official computation (gasvn/Res2Net):

    * a *stage* block (first of a stage) convolves every split independently, without the
      hierarchical adds, and passes its last split through a 3x3 average pool (padding counted);
    * other blocks add each conv's output to the next split, and pass the last split unchanged;
    * the stride sits on the 3x3 convs and on the stage pool.

    mmdetection's Res2Net (which its detector checkpoints were trained with) applies the stage
    pool only where the stride is not 1: ``stride1_pool=False`` computes that.

    Args:
        in_channels: input channels.
        out_channels: output channels of the final 1x1 conv.
        width: channels of one split (all ``scale`` splits have this width).
        scale: number of splits; ``scale - 1`` of them are convolved (one when ``scale == 1``).
        stride: stride of the 3x3 convs and of the stage pool.
        stage: True for the first block of a stage (see above).
        cardinality: groups of each 3x3 conv (Res2NeXt).
        dilation: dilation of the 3x3 convs (``output_stride`` 8 or 16).
        downsample: cell computing the shortcut, or None for identity (DLA passes its own).
        drop_path: stochastic-depth probability of the residual branch.
        zero_init_last: zero the last BN's scale so the block starts as identity (timm default).
        stride1_pool: apply the stage pool in stride-1 stage blocks too (official); False:
            pass the last split unchanged there (mmdetection).
    """

    def __init__(self, in_channels, out_channels, width, scale=4, stride=1, stage=False,
                 cardinality=1, dilation=1, downsample=None, drop_path=0.0, zero_init_last=False,
                 stride1_pool=True):
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}: it is the number of splits")
        self.width = width
        self.scale = scale
        self.nums = max(1, scale - 1)
        self.stage = stage
        self.conv1 = conv2d(in_channels, width * scale, 1)
        self.bn1 = batch_norm(width * scale)
        self.convs = nn.CellList([
            conv2d(width, width, 3, stride=stride, dilation=dilation, groups=cardinality)
            for _ in range(self.nums)
        ])
        self.bns = nn.CellList([batch_norm(width) for _ in range(self.nums)])
        self.pool = (stage_pool(stride) if stage and scale > 1 and (stride > 1 or stride1_pool)
                     else None)
        self.conv3 = conv2d(width * scale, out_channels, 1)
        self.bn3 = batch_norm(out_channels)
        if zero_init_last:
            self.bn3.gamma.set_data(ops.zeros_like(self.bn3.gamma))
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None

    def construct(self, x, shortcut=None):
        if shortcut is None:
            shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        splits = ops.split(out, self.width, axis=1)
        outs = ()
        sp = splits[0]
        for i in range(self.nums):
            if i > 0:
                sp = splits[i] if self.stage else sp + splits[i]
            sp = self.relu(self.bns[i](self.convs[i](sp)))
            outs = outs + (sp,)
        if self.scale > 1:
            last = splits[self.nums]
            outs = outs + ((last if self.pool is None else self.pool(last)),)
        out = self.bn3(self.conv3(ops.cat(outs, axis=1)))
        if self.drop_path is not None:
            out = self.drop_path(out)
        return self.relu(out + shortcut)
