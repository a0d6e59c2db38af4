"""HTC's semantic branch: mmdetection's ``FusedSemanticHead``, which fuses every pyramid level
at one level's resolution into a feature map that the RoI heads add to their own features."""
import mindspore as ms
from mindspore import nn, ops

from .layers import ConvModule

__all__ = ["FusedSemanticHead"]


class FusedSemanticHead(nn.Cell):
    """Lateral 1x1 convs (+ ReLU) of every level, resized bilinearly (``align_corners=True``)
    to the ``fusion_level`` and summed; a conv tower (3x3 + ReLU) and a 1x1 embedding (+ ReLU).

    ``conv_logits`` (the stuff segmentation of training) is part of the published weights
    but unused at test time.
    """

    def __init__(self, num_ins=5, fusion_level=1, num_convs=4, in_channels=256,
                 conv_out_channels=256, num_classes=183):
        super().__init__()
        self.fusion_level = fusion_level
        self.lateral_convs = nn.CellList([ConvModule(in_channels, in_channels, 1)
                                          for _ in range(num_ins)])
        self.convs = nn.CellList([ConvModule(in_channels if i == 0 else conv_out_channels,
                                             conv_out_channels, 3) for i in range(num_convs)])
        self.conv_embedding = ConvModule(conv_out_channels, conv_out_channels, 1)
        self.conv_logits = nn.Conv2d(conv_out_channels, num_classes, 1, has_bias=True)

    @ms.jit
    def construct(self, feats):
        """The fused semantic feature (N, 256, H, W) at the fusion level's size."""
        x = self.lateral_convs[self.fusion_level](feats[self.fusion_level])
        size = x.shape[2:]
        for i in range(len(feats)):
            if i != self.fusion_level:
                resized = ops.interpolate(feats[i], size=size, mode="bilinear",
                                          align_corners=True)
                x = x + self.lateral_convs[i](resized)
        for conv in self.convs:
            x = conv(x)
        return self.conv_embedding(x)
