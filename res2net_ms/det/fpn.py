"""Feature pyramid network (mmdetection's ``FPN`` with ``num_outs=5``, no extra convs)."""
from mindspore import nn, ops

__all__ = ["FPN"]


def _conv(in_channels, out_channels, kernel_size):
    return nn.Conv2d(in_channels, out_channels, kernel_size, pad_mode="pad",
                     padding=kernel_size // 2, has_bias=True)


class FPN(nn.Cell):
    """Lateral 1x1 convs, top-down nearest upsampling and sums, 3x3 output convs; the levels
    beyond the inputs take every second pixel of the last one (``max_pool2d(x, 1, stride=2)``).

    Args:
        in_channels: channels of the backbone stages used (C2..C5).
        out_channels: channels of every pyramid level.
        num_outs: pyramid levels returned (P2..P6 for 5).
    """

    def __init__(self, in_channels=(256, 512, 1024, 2048), out_channels=256, num_outs=5):
        super().__init__()
        self.lateral_convs = nn.CellList([_conv(c, out_channels, 1) for c in in_channels])
        self.fpn_convs = nn.CellList([_conv(out_channels, out_channels, 3) for _ in in_channels])
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.num_levels = len(in_channels)
        self.num_extra = num_outs - len(in_channels)

    def construct(self, inputs):
        laterals = ()
        for i in range(self.num_levels):
            laterals = laterals + (self.lateral_convs[i](inputs[i]),)
        merged = (laterals[-1],)  # top-down: each level plus its upsampled upper neighbour
        for i in range(self.num_levels - 2, -1, -1):
            upper = ops.interpolate(merged[0], size=laterals[i].shape[2:], mode="nearest")
            merged = (laterals[i] + upper,) + merged
        outs = ()
        for i in range(self.num_levels):
            outs = outs + (self.fpn_convs[i](merged[i]),)
        for _ in range(self.num_extra):
            outs = outs + (outs[-1][:, :, ::2, ::2],)
        return outs
