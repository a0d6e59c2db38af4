"""mmdetection's samplers in MindSpore ops: which assigned priors a loss uses, as masks over
the priors (static shapes), ``RandomSampler`` drawing fixed counts and ``PseudoSampler``
taking every one (for parity checks).

The random draws are keys drawn on the host per image (:meth:`~.train_step.TwoStageLoss.inputs`)
and fed to the graph, not a random op inside it: an image gets the same draw whatever the
batch, the rank or a resume from a checkpoint, as its data and flip do."""
import mindspore as ms
from mindspore import nn, ops

__all__ = ["RandomSampler", "PseudoSampler", "build_sampler"]


class PseudoSampler(nn.Cell):
    """Every positive (gt index > 0) and negative (0) valid prior; ignored ones (-1) are left
    out. The losses are averaged over the positives (``avg_factor_with_neg`` False)."""

    add_gt_as_proposals = False
    avg_factor_with_neg = False

    def construct(self, gt_inds, valid, keys=None):
        """Masks (N, P) of the positives and negatives among ``valid`` priors."""
        return (gt_inds > 0) & valid, (gt_inds == 0) & valid


class RandomSampler(nn.Cell):
    """At most ``num * pos_fraction`` positives drawn at random, then negatives up to ``num``
    in all (at most ``neg_pos_ub`` per positive when >= 0), as mmdetection's sampler. A draw
    ranks the candidates by their uniform random keys (``TopK``), so every image gets a
    fixed-size choice whatever its counts; positives and negatives are disjoint, so one key
    per prior serves both draws. With ``add_gt_as_proposals`` the caller puts the gt boxes
    first among the priors."""

    avg_factor_with_neg = True

    def __init__(self, num, pos_fraction, neg_pos_ub=-1, add_gt_as_proposals=True):
        super().__init__()
        self.num = num
        self.num_pos = int(num * pos_fraction)
        self.neg_pos_ub = neg_pos_ub
        self.add_gt_as_proposals = add_gt_as_proposals

    def _choose(self, candidates, count, keys):
        """A mask of ``count`` (N,) candidates per row (all of them when fewer): those of the
        True of ``candidates`` (N, P) with the highest ``keys`` (N, P) in [0, 1)."""
        keys = ops.where(candidates, keys, ops.full_like(keys, -1.0))
        k = min(self.num, candidates.shape[1])
        values, indices = ops.topk(keys, k)
        rank = ops.arange(k, dtype=ms.int32)[None, :]
        chosen = (values >= 0) & (rank < count[:, None])
        mask = ops.tensor_scatter_elements(ops.zeros_like(keys), indices,
                                           chosen.astype(ms.float32), axis=1)
        return mask > 0

    def construct(self, gt_inds, valid, keys):
        """Masks (N, P) of the sampled positives and negatives among ``valid`` priors, drawn
        by ``keys`` (N, P)."""
        pos_count = ops.full((gt_inds.shape[0],), self.num_pos, dtype=ms.int32)
        pos = self._choose((gt_inds > 0) & valid, pos_count, keys)
        num_pos = pos.astype(ms.int32).sum(axis=1)
        neg_count = self.num - num_pos
        if self.neg_pos_ub >= 0:
            bound = (ops.maximum(num_pos, 1) * self.neg_pos_ub).astype(ms.int32)
            neg_count = ops.minimum(neg_count, bound)
        neg = self._choose((gt_inds == 0) & valid, neg_count, keys)
        return pos, neg


def build_sampler(cfg):
    """The sampler of an mmdetection sampler config (``type`` RandomSampler or
    PseudoSampler)."""
    cfg = dict(cfg)
    kind = cfg.pop("type")
    if kind == "PseudoSampler":
        return PseudoSampler()
    if kind == "RandomSampler":
        return RandomSampler(**cfg)
    raise ValueError(f"sampler type '{kind}' is not implemented: use RandomSampler or "
                     "PseudoSampler")
