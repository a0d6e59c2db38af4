"""What every network of the zoo shares: classifier head, feature extraction, freezing.

A network is a sequence of *stages* (index 0 is the stem). ``out_indices`` and
``frozen_stages`` both count in these indices, as in timm's ``feature_info`` and mmpretrain's
``frozen_stages``.
"""
from mindspore import nn

from .layers import GlobalAvgPool


class Backbone(nn.Cell):
    """Base class: subclasses build their stages, then call :meth:`_init_backbone`.

    Subclasses implement ``forward_stages(x) -> tuple`` (the output of every stage) and set
    ``self._stage_cells``: for each stage, the attribute names of the cells it consists of.
    """

    def _init_backbone(self, stage_channels, stage_reductions, num_classes, drop_rate,
                       features_only, out_indices, frozen_stages, norm_eval):
        num_stages = len(stage_channels)
        out_indices = tuple(out_indices)
        bad = [i for i in out_indices if not 0 <= i < num_stages]
        if bad or not out_indices:
            raise ValueError(f"out_indices {out_indices} out of range: this network has stages "
                             f"0..{num_stages - 1} (0 is the stem)")
        if not -1 <= frozen_stages < num_stages:
            raise ValueError(f"frozen_stages={frozen_stages} out of range: use -1 (none) to "
                             f"{num_stages - 1} (stem and every stage)")
        self.feature_info = [
            dict(num_chs=c, reduction=r, module=self._stage_cells[i][-1], index=i)
            for i, (c, r) in enumerate(zip(stage_channels, stage_reductions))
        ]
        self.features_only = features_only
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.num_features = stage_channels[-1]
        self.drop_rate = drop_rate
        self.global_pool = GlobalAvgPool()
        self.dropout = nn.Dropout(p=drop_rate) if drop_rate > 0 else None
        self.num_classes = 0
        self.fc = None
        if not features_only:
            self.reset_classifier(num_classes)
        self._freeze_stages()
        self._apply_eval_modes()

    def reset_classifier(self, num_classes):
        """Replace the classifier by a fresh one with ``num_classes`` outputs (0: none)."""
        self.num_classes = num_classes
        self.fc = nn.Dense(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self):
        return self.fc

    def group_matcher(self, coarse=False):
        """Parameter groups in depth order (timm's convention, used by mindcv's layer-wise
        learning-rate decay): the stem, then each stage, or each block with ``coarse=False``;
        the classifier matches nothing and comes last."""
        matcher = {}
        for index, names in enumerate(self._stage_cells):
            pattern = "|".join(names)
            if index == 0 or coarse or not isinstance(getattr(self, names[0]),
                                                       nn.SequentialCell):
                matcher[f"stage{index}"] = rf"^(?:{pattern})\."
            else:
                matcher[f"stage{index}"] = [(rf"^(?:{pattern})\.(\d+)\.", None)]
        return matcher

    def stage_cells(self, index):
        """The cells that make up stage ``index`` (0 is the stem)."""
        return [getattr(self, name) for name in self._stage_cells[index]]

    def _freeze_stages(self):
        for i in range(self.frozen_stages + 1):
            for cell in self.stage_cells(i):
                for param in cell.get_parameters():
                    param.requires_grad = False

    def _apply_eval_modes(self):
        """Put frozen stages, and every BN with ``norm_eval``, in inference mode."""
        for i in range(self.frozen_stages + 1):
            for cell in self.stage_cells(i):
                cell.add_flags_recursive(training=False)
        if self.norm_eval:
            for _, cell in self.cells_and_names():
                if isinstance(cell, nn.BatchNorm2d):
                    cell.add_flags(training=False)

    def add_flags_recursive(self, **flags):
        """``set_train`` (of this network or of any wrapper) ends here: re-apply the eval modes."""
        super().add_flags_recursive(**flags)
        if flags.get("training") and hasattr(self, "frozen_stages"):
            self._apply_eval_modes()
        return self

    def forward_features(self, x):
        """The last stage's feature map (N, num_features, H/32, W/32)."""
        return self.forward_stages(x)[-1]

    def forward_head(self, x, pre_logits=False):
        x = self.global_pool(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return x if pre_logits else self.fc(x)

    def construct(self, x):
        stages = self.forward_stages(x)
        if self.features_only:
            feats = ()
            for i in self.out_indices:
                feats = feats + (stages[i],)
            return feats
        return self.forward_head(stages[-1])
