"""Res2Net-DLA-60 and Res2NeXt-DLA-60, as in the official ``dla.py`` (gasvn/Res2Net).

timm's ``dla60_res2net`` is a different network (other widths and counts); this follows the
official code, whose weights and published numbers belong to it. Two deliberate differences:
the head pools globally instead of ``AvgPool2d(7)`` (identical at 224, usable at any size), and
the classifier is a Dense instead of a 1x1 conv (the converter reshapes the weight).

The official multi-level trees build a ``project`` shortcut whose output is never used; it is
kept so that checkpoints and parameter counts match, and it receives no gradient.
"""
from mindspore import nn, ops

from .backbone import Backbone
from .block import Bottle2neck
from .layers import batch_norm, conv2d


class Root(nn.Cell):
    """Aggregation node: 1x1 conv over the concatenated children, BN, ReLU."""

    def __init__(self, in_channels, out_channels, residual=False):
        super().__init__()
        self.conv = conv2d(in_channels, out_channels, 1)
        self.bn = batch_norm(out_channels)
        self.relu = nn.ReLU()
        self.residual = residual

    def construct(self, children):
        x = self.bn(self.conv(ops.cat(children, axis=1)))
        if self.residual:
            x = x + children[0]
        return self.relu(x)


class Tree(nn.Cell):
    """Hierarchical aggregation tree of ``levels`` levels (DLA's ``Tree``)."""

    def __init__(self, levels, make_block, in_channels, out_channels, stride=1,
                 level_root=False, root_dim=0, root_residual=False):
        super().__init__()
        if root_dim == 0:
            root_dim = 2 * out_channels
        if level_root:
            root_dim += in_channels
        if levels == 1:
            self.tree1 = make_block(in_channels, out_channels, stride)
            self.tree2 = make_block(out_channels, out_channels, 1)
            self.root = Root(root_dim, out_channels, root_residual)
        else:
            self.tree1 = Tree(levels - 1, make_block, in_channels, out_channels, stride,
                              root_residual=root_residual)
            self.tree2 = Tree(levels - 1, make_block, out_channels, out_channels,
                              root_dim=root_dim + out_channels, root_residual=root_residual)
        self.levels = levels
        self.level_root = level_root
        self.downsample = nn.MaxPool2d(stride, stride) if stride > 1 else None
        self.project = None
        if in_channels != out_channels:
            self.project = nn.SequentialCell([conv2d(in_channels, out_channels, 1),
                                              batch_norm(out_channels)])

    def construct(self, x, children=()):
        bottom = x if self.downsample is None else self.downsample(x)
        if self.level_root:
            children = children + (bottom,)
        if self.levels == 1:
            residual = bottom if self.project is None else self.project(bottom)
            x1 = self.tree1(x, residual)
            x2 = self.tree2(x1)
            return self.root((x2, x1) + children)
        x1 = self.tree1(x)
        return self.tree2(x1, children + (x1,))


class DLA(Backbone):
    """Deep Layer Aggregation with Res2Net bottlenecks.

    Args:
        levels: blocks of level0/1 (plain convs) and tree depth of levels 2..5.
        channels: output channels of the six levels.
        base_width: split width for 128 planes (28 for Res2Net-DLA-60).
        scale: number of splits per block.
        cardinality: groups of the 3x3 convs (8 for Res2NeXt-DLA-60).
        residual_root: add the first child to each root's output.
        num_classes, in_channels, drop_rate, drop_path_rate, features_only, out_indices,
        frozen_stages, norm_eval, zero_init_last: as for :class:`~res2net_ms.models.res2net.Res2Net`;
        stage ``i`` is ``level{i}`` (stage 0 includes the stride-1 base layer).
    """

    def __init__(self, levels=(1, 1, 1, 2, 3, 1), channels=(16, 32, 128, 256, 512, 1024),
                 base_width=28, scale=4, cardinality=1, residual_root=False, num_classes=1000,
                 in_channels=3, drop_rate=0.0, drop_path_rate=0.0, output_stride=32,
                 features_only=False, out_indices=(0, 1, 2, 3, 4, 5), frozen_stages=-1,
                 norm_eval=False, zero_init_last=False):
        super().__init__()
        if output_stride != 32:
            raise ValueError(f"output_stride={output_stride} is not supported by DLA networks "
                             "(their trees downsample by max pooling): use 32")
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}: it is the number of splits")
        total_blocks = sum(2 ** n for n in levels[2:])
        drop_rates = iter([drop_path_rate * i / max(1, total_blocks - 1)
                           for i in range(total_blocks)])

        def make_block(in_ch, out_ch, stride):
            width = (out_ch * base_width // 128) * cardinality
            return Bottle2neck(in_ch, out_ch, width, scale=scale, stride=stride,
                               stage=stride != 1, cardinality=cardinality,
                               drop_path=next(drop_rates), zero_init_last=zero_init_last)

        self.base_layer = _conv_level(in_channels, channels[0], 1, kernel_size=7)
        self.level0 = _conv_level(channels[0], channels[0], levels[0])
        self.level1 = _conv_level(channels[0], channels[1], levels[1], stride=2)
        self.level2 = Tree(levels[2], make_block, channels[1], channels[2], 2,
                           level_root=False, root_residual=residual_root)
        self.level3 = Tree(levels[3], make_block, channels[2], channels[3], 2,
                           level_root=True, root_residual=residual_root)
        self.level4 = Tree(levels[4], make_block, channels[3], channels[4], 2,
                           level_root=True, root_residual=residual_root)
        self.level5 = Tree(levels[5], make_block, channels[4], channels[5], 2,
                           level_root=True, root_residual=residual_root)
        self._stage_cells = [("base_layer", "level0")] + [(f"level{i}",) for i in range(1, 6)]
        self._init_backbone(list(channels), [1, 2, 4, 8, 16, 32], num_classes, drop_rate,
                            features_only, out_indices, frozen_stages, norm_eval)

    def forward_stages(self, x):
        x0 = self.level0(self.base_layer(x))
        x1 = self.level1(x0)
        x2 = self.level2(x1)
        x3 = self.level3(x2)
        x4 = self.level4(x3)
        x5 = self.level5(x4)
        return x0, x1, x2, x3, x4, x5


def _conv_level(in_ch, out_ch, num_convs, stride=1, kernel_size=3):
    """``num_convs`` conv-BN-ReLU triples, the first one strided."""
    cells = []
    for i in range(num_convs):
        cells += [conv2d(in_ch, out_ch, kernel_size, stride=stride if i == 0 else 1),
                  batch_norm(out_ch), nn.ReLU()]
        in_ch = out_ch
    return nn.SequentialCell(cells)
