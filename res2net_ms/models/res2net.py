"""Res2Net v1, v1b (= v1d) and Res2NeXt: the ResNet-shaped networks of the zoo.

Parameter names follow the official PyTorch code (``conv1``, ``layerN.M.convs.i``,
``downsample``, ``fc``), with MindSpore's BN leaf names (``gamma``, ``beta``, ``moving_mean``,
``moving_variance``), so converting official or timm weights is a rename of BN leaves only.
"""
from mindspore import nn

from .backbone import Backbone
from .block import Bottle2neck
from .layers import batch_norm, conv2d, stem_pool

EXPANSION = 4


class Res2Net(Backbone):
    """A Res2Net with a ResNet layout: stem, four stages of :class:`Bottle2neck`, head.

    Args:
        layers: number of blocks in each of the four stages, e.g. ``(3, 4, 6, 3)``.
        base_width: split width of the first stage for 64 planes (the "26w" in the names).
        scale: number of splits per block (the "4s").
        cardinality: groups of the 3x3 convs; > 1 gives Res2NeXt.
        deep_stem: v1b stem (three 3x3 convs) instead of one 7x7 conv.
        stem_width: channels of the first two deep-stem convs.
        avg_down: v1b shortcut (average pool, then 1x1 conv) instead of a strided 1x1 conv.
        num_classes: classifier outputs; 0 keeps the pooled features.
        in_channels: input image channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly to this value over the blocks.
        output_stride: 32, 16 or 8; the last stages are dilated instead of strided below 32.
        features_only: return the outputs of the stages in ``out_indices`` instead of logits.
        out_indices: stages to return (0 stem at stride 2, 1..4 the stages at 4/8/16/32).
        frozen_stages: freeze the stem and stages 1..k (-1: nothing frozen).
        norm_eval: keep every BN in inference mode, even in training.
        zero_init_last: start each block as identity by zeroing its last BN scale.
        stride1_pool: the stage pool also in stride-1 stage blocks (official); False as
            mmdetection's Res2Net (layer1.0, and dilated stages, have none).
    """

    def __init__(self, layers, base_width=26, scale=4, cardinality=1, deep_stem=False,
                 stem_width=32, avg_down=False, num_classes=1000, in_channels=3, drop_rate=0.0,
                 drop_path_rate=0.0, output_stride=32, features_only=False,
                 out_indices=(1, 2, 3, 4), frozen_stages=-1, norm_eval=False,
                 zero_init_last=False, stride1_pool=True):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}: it is the number of splits")
        if deep_stem:
            self.conv1 = nn.SequentialCell([
                conv2d(in_channels, stem_width, 3, stride=2), batch_norm(stem_width), nn.ReLU(),
                conv2d(stem_width, stem_width, 3), batch_norm(stem_width), nn.ReLU(),
                conv2d(stem_width, 64, 3),
            ])
        else:
            self.conv1 = conv2d(in_channels, 64, 7, stride=2)
        self.bn1 = batch_norm(64)
        self.relu = nn.ReLU()
        self.maxpool = stem_pool()

        total_blocks = sum(layers)
        block_index = 0
        in_ch, net_stride, dilation = 64, 4, 1
        stage_channels, reductions = [64], [2]
        for stage, num_blocks in enumerate(layers):
            planes = 64 * 2 ** stage
            stride = 1 if stage == 0 else 2
            first_dilation = dilation
            if stride > 1 and net_stride >= output_stride:
                dilation *= stride
                stride = 1
            else:
                net_stride *= stride
            width = (planes * base_width // 64) * cardinality
            out_ch = planes * EXPANSION
            blocks = []
            for i in range(num_blocks):
                dpr = drop_path_rate * block_index / max(1, total_blocks - 1)
                downsample = None
                if i == 0 and (stride != 1 or in_ch != out_ch):
                    downsample = _shortcut(in_ch, out_ch, stride, avg_down, dilation)
                blocks.append(Bottle2neck(
                    in_ch, out_ch, width, scale=scale, stride=stride if i == 0 else 1,
                    stage=i == 0, cardinality=cardinality,
                    dilation=first_dilation if i == 0 else dilation, downsample=downsample,
                    drop_path=dpr, zero_init_last=zero_init_last, stride1_pool=stride1_pool,
                ))
                in_ch = out_ch
                block_index += 1
            setattr(self, f"layer{stage + 1}", nn.SequentialCell(blocks))
            stage_channels.append(out_ch)
            reductions.append(net_stride)

        self._stage_cells = [("conv1", "bn1")] + [(f"layer{i}",) for i in range(1, 5)]
        self._init_backbone(stage_channels, reductions, num_classes, drop_rate, features_only,
                            out_indices, frozen_stages, norm_eval)

    def forward_stages(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        stem = x
        x1 = self.layer1(self.maxpool(x))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return stem, x1, x2, x3, x4


def _shortcut(in_ch, out_ch, stride, avg_down, dilation):
    """Projection shortcut; with ``avg_down`` the stride moves into an average pool (v1b).

    The v1b pool is ``AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)``;
    MindSpore's ``same`` padding computes exactly that. Where the stride is 1 the pool is an
    identity, kept as index 0 so parameter names match the official ``downsample.1/.2``;
    in dilated stages it is timm's 2x2 stride-1 pool over zero padding on the far side.
    """
    if not avg_down:
        return nn.SequentialCell([conv2d(in_ch, out_ch, 1, stride=stride), batch_norm(out_ch)])
    if stride > 1:
        pool = nn.AvgPool2d(stride, stride, pad_mode="same")
    elif dilation > 1:
        pool = nn.SequentialCell([nn.Pad(((0, 0), (0, 0), (0, 1), (0, 1))), nn.AvgPool2d(2, 1)])
    else:
        pool = nn.Identity()
    return nn.SequentialCell([pool, conv2d(in_ch, out_ch, 1), batch_norm(out_ch)])
