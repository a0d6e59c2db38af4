"""Training and evaluation batches from one scan of an ImageFolder, with mindcv's transforms.

mindcv's ``create_transforms`` / ``create_loader`` decode, augment, batch and mix; what this
module adds is the sample order. Each epoch's order is a permutation drawn from
``seed + epoch`` over the samples scanned once per run, sharded over the ranks, so that

* a run resumed at any epoch, or at any step of an epoch, sees the batches an uninterrupted
  run would have seen: the batches already trained on are skipped before any file is read;
* a file that cannot be decoded is named in one line (or, with ``skip_bad_images``, replaced
  by its neighbour in the order and counted), instead of a pipeline traceback.
"""
import logging
import os

import mindspore.dataset as ds
import numpy as np
from mindcv.data import create_loader, create_transforms

from .folder import DataError
from .images import bad_images

__all__ = ["build_transforms", "epoch_order", "TrainData", "create_eval_loader"]

logger = logging.getLogger("res2net_ms")


def build_transforms(args, is_training):
    """mindcv's ImageNet transforms with this run's sizes, crop, mean/std and augmentation."""
    common = dict(interpolation=args.interpolation, mean=list(args.mean), std=list(args.std))
    if not is_training:
        return create_transforms("", image_resize=args.image_resize, is_training=False,
                                 crop_pct=args.crop_pct, **common)
    return create_transforms(
        "", image_resize=args.image_resize, is_training=True, auto_augment=args.auto_augment,
        scale=tuple(args.scale), ratio=tuple(args.ratio), hflip=args.hflip, vflip=args.vflip,
        color_jitter=args.color_jitter, re_prob=args.re_prob, re_scale=tuple(args.re_scale),
        re_ratio=tuple(args.re_ratio), re_value=args.re_value,
        re_max_attempts=args.re_max_attempts, separate=args.aug_splits > 0, **common)


def _workers(args):
    """Workers per pipeline: MindSpore refuses more than there are CPUs."""
    if args.deterministic:
        return 1
    return max(1, min(args.num_parallel_workers, os.cpu_count() or 1))


class _Files:
    """Random-access source of ``(encoded bytes, label)``: decoding happens in the pipeline."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        return np.fromfile(path, dtype=np.uint8), np.int32(label)


def _source(samples, indices):
    # One reader: the files are only read here (decoding is in the map), and more Python
    # threads contend for the GIL and read slower.
    return ds.GeneratorDataset(_Files(samples), ["image", "label"], sampler=list(indices),
                               num_parallel_workers=1, python_multiprocessing=False)


def epoch_order(num_images, epoch, seed, shuffle=True, num_samples=None, repeats=0, rank=0,
                group_size=1):
    """This rank's sample indices for ``epoch`` (0-based).

    The global order is a permutation drawn from ``seed + epoch`` (the first ``num_samples``
    of it, each index repeated ``repeats`` times for repeated augmentation as mindcv's
    ``RepeatAugSampler``); it is padded with its own head to a multiple of ``group_size`` and
    dealt out rank by rank, so every rank gets the same number of samples.
    """
    order = (np.random.RandomState(seed + epoch).permutation(num_images) if shuffle
             else np.arange(num_images))
    if num_samples:
        order = order[:num_samples]
    length = -(-len(order) // group_size)
    if repeats > 1:
        order = np.repeat(order, repeats)
    order = np.resize(order, -(-len(order) // group_size) * group_size)
    return order[rank::group_size][:length]


class TrainData:
    """The training batches of every epoch, from the samples of one folder scan.

    ``steps_per_epoch`` is known before anything is read. :meth:`batches` yields an epoch's
    ``(images, labels)`` from a given step on, naming (or replacing) undecodable files.
    """

    def __init__(self, args, samples, rank=0, group_size=1):
        self.args = args
        self.samples = samples
        self.rank = rank
        self.group_size = group_size
        self.transforms = build_transforms(args, True)
        per_rank = len(self._order(0))
        batch = args.batch_size
        self.steps_per_epoch = per_rank // batch if args.drop_remainder else -(-per_rank // batch)
        self.replaced = {}  # undecodable sample index -> the index used in its place
        self.skipped = []   # undecodable files met in the current epoch

    def _order(self, epoch):
        a = self.args
        return epoch_order(len(self.samples), epoch, a.seed, a.shuffle, a.num_samples,
                           a.aug_repeats, self.rank, self.group_size)

    def _loader(self, indices, epoch):
        a = self.args
        ds.config.set_seed(a.seed + epoch)  # augmentation draws, fixed per epoch
        return create_loader(
            _source(self.samples, indices), batch_size=a.batch_size,
            drop_remainder=a.drop_remainder, is_training=True, mixup=a.mixup, cutmix=a.cutmix,
            cutmix_prob=a.cutmix_prob, num_classes=a.num_classes, transform=self.transforms,
            num_parallel_workers=_workers(a), separate=a.aug_splits > 0)

    def loader(self, epoch, start_step=0):
        """The epoch's pipeline from ``start_step`` on (for a device data sink)."""
        indices = [self.replaced.get(i, i) for i in self._order(epoch)]
        return self._loader(indices[start_step * self.args.batch_size:], epoch)

    def batches(self, epoch, start_step=0):
        """Yield the batches of ``epoch`` from step ``start_step`` on (earlier files unread)."""
        order = self._order(epoch)
        self.skipped = []
        position = start_step * self.args.batch_size
        while True:
            indices = [self.replaced.get(i, i) for i in order[position:]]
            try:
                for images, labels in self._loader(indices, epoch).create_tuple_iterator(
                        num_epochs=1):
                    position += self.args.batch_size
                    yield images, labels
                return
            except RuntimeError as exc:
                self._handle_failure(exc, order, position)

    def _handle_failure(self, exc, order, position):
        """Find the undecodable file at or after ``position``: raise, or replace it."""
        window = order[position:position + max(32 * self.args.batch_size, 512)]
        window = [self.replaced.get(i, i) for i in window]
        bad = bad_images([self.samples[i][0] for i in window])
        if not bad:
            detail = " ".join(str(exc).split())[:300]
            raise DataError(f"the data pipeline failed and no file near sample {position} of "
                            f"this epoch is undecodable: {detail}") from None
        path, problem = bad[0]
        data_dir = self.args.data_dir
        if not self.args.skip_bad_images:
            raise DataError(f"cannot decode image '{path}' ({problem}): remove or replace it, "
                            f"or set skip_bad_images: true; python -m res2net_ms.data check "
                            f"{data_dir} lists every bad file") from None
        index = next(i for i in window if self.samples[i][0] == path)
        self.replaced[index] = self._neighbour(index)
        self.skipped.append(path)
        logger.warning("warning: skipping undecodable image '%s' (%s)", path, problem)

    def _neighbour(self, index):
        """The decodable sample used in place of an undecodable one: the next in file order."""
        for step in range(1, len(self.samples)):
            candidate = (index + step) % len(self.samples)
            if candidate not in self.replaced and not bad_images([self.samples[candidate][0]]):
                return candidate
        raise DataError("no decodable image left in the training split")


def create_eval_loader(args, samples, rank=0, group_size=1):
    """Validation batches (last batch kept); rank r gets samples r, r+n, r+2n, ...

    Every image is evaluated exactly once, whatever the shard sizes; ``eval_shuffle`` changes
    only the order (as mindcv's).
    """
    order = np.arange(len(samples))
    if args.eval_shuffle:
        order = np.random.RandomState(args.seed).permutation(len(samples))
    return create_loader(_source(samples, order[rank::group_size]), batch_size=args.batch_size,
                         drop_remainder=False, is_training=False, num_classes=args.num_classes,
                         transform=build_transforms(args, False),
                         num_parallel_workers=_workers(args))
