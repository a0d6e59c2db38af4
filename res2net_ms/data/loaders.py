"""Training and evaluation batches from one scan of an ImageFolder, with mindcv's transforms.

mindcv's ``create_transforms`` / ``create_loader`` decode, augment, batch and mix; what this
module adds is the sample order. Each epoch's order is a permutation drawn from
``seed + epoch`` over the samples scanned once per run, sharded over the ranks, so that

* a run resumed at any epoch, or at any step of an epoch, sees the batches an uninterrupted
  run would have seen: the batches already trained on are skipped before any file is read;
* a file that cannot be decoded is named in one line, instead of a pipeline traceback; with
  ``skip_bad_images`` it is counted and, in training, replaced by its neighbour in the order
  (the epoch keeps its length on every rank), in evaluation left out.

This holds wherever the batches go: fed by the loop, pulled by a device data sink, evaluated.
"""
import logging
import os

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
from mindcv.data import create_loader, create_transforms

from .folder import DataError
from .images import bad_images
from .preprocess import Preprocess

__all__ = ["build_transforms", "epoch_order", "TrainData", "EvalData"]

logger = logging.getLogger("res2net_ms")


def build_transforms(args, is_training):
    """mindcv's ImageNet transforms with this run's sizes, crop, mean/std and augmentation."""
    if not is_training:
        return Preprocess(args.image_resize, args.crop_pct, tuple(args.mean), tuple(args.std),
                          args.interpolation).transforms(decode=True)
    return create_transforms(
        "", image_resize=args.image_resize, is_training=True, auto_augment=args.auto_augment,
        scale=tuple(args.scale), ratio=tuple(args.ratio), hflip=args.hflip, vflip=args.vflip,
        color_jitter=args.color_jitter, re_prob=args.re_prob, re_scale=tuple(args.re_scale),
        re_ratio=tuple(args.re_ratio), re_value=args.re_value,
        re_max_attempts=args.re_max_attempts, separate=args.aug_splits > 0,
        interpolation=args.interpolation, mean=list(args.mean), std=list(args.std))


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


def _undecodable(exc, paths, position, args):
    """The undecodable file among ``paths`` (from the sample at ``position``, where the
    pipeline stopped, on) that made ``exc``: one line that stops the run, or, with
    ``skip_bad_images``, a warning and its path."""
    bad = bad_images(paths)
    if not bad:
        detail = " ".join(str(exc).split())[:300]
        raise DataError(f"the data pipeline failed and no file near sample {position} of "
                        f"this pass is undecodable: {detail}") from None
    path, problem = bad[0]
    if not args.skip_bad_images:
        raise DataError(f"cannot decode image '{path}' ({problem}): remove or replace it, "
                        f"or set skip_bad_images: true; python -m res2net_ms.data check "
                        f"{args.data_dir} lists every bad file") from None
    logger.warning("warning: skipping undecodable image '%s' (%s)", path, problem)
    return path


def _window(args):
    """How many samples past the failure point to search: the pipeline reads ahead."""
    return max(32 * args.batch_size, 512)


class TrainData:
    """The training batches of every epoch, from the samples of one folder scan.

    ``steps_per_epoch`` is known before anything is read. :meth:`batches` (fed by the loop)
    and :meth:`sink_steps` (pulled by the device) run an epoch from a given step on.
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

    def batches(self, epoch, start_step=0):
        """Yield the batches of ``epoch`` from step ``start_step`` on (earlier files unread)."""
        return self._steps(epoch, start_step,
                           lambda pipeline, step: pipeline.create_tuple_iterator(num_epochs=1))

    def sink_steps(self, step_cell, epoch, start_step=0):
        """Yield the outputs of ``step_cell`` for the steps of ``epoch`` from ``start_step``
        on, the batches pulled by the device (``mindspore.data_sink``, Ascend/GPU)."""
        def pull(pipeline, step):
            sink = ms.data_sink(step_cell, pipeline, sink_size=1)
            return (sink() for _ in range(step, self.steps_per_epoch))
        return self._steps(epoch, start_step, pull)

    def _steps(self, epoch, start_step, pull):
        """What ``pull(pipeline, step)`` yields, one item a step; after an undecodable file
        the pipeline is rebuilt from the step where it stopped, the file replaced."""
        order = self._order(epoch)
        self.skipped = []
        step = start_step
        while True:
            position = step * self.args.batch_size
            try:
                indices = [self.replaced.get(i, i) for i in order[position:]]
                for item in pull(self._loader(indices, epoch), step):
                    step += 1
                    yield item
                return
            except RuntimeError as exc:
                window = [self.replaced.get(i, i)
                          for i in order[position:position + _window(self.args)]]
                path = _undecodable(exc, [self.samples[i][0] for i in window], position,
                                    self.args)
                index = next(i for i in window if self.samples[i][0] == path)
                self.replaced[index] = self._neighbour(index)
                self.skipped.append(path)

    def _neighbour(self, index):
        """The decodable sample used in place of an undecodable one: the next in file order."""
        for step in range(1, len(self.samples)):
            candidate = (index + step) % len(self.samples)
            if candidate not in self.replaced and not bad_images([self.samples[candidate][0]]):
                return candidate
        raise DataError("no decodable image left in the training split")


class EvalData:
    """Validation batches (last batch kept); rank r gets samples r, r+n, r+2n, ...

    Every image is evaluated exactly once, whatever the shard sizes; ``eval_shuffle`` changes
    only the order (as mindcv's). With ``skip_bad_images`` an undecodable file is left out of
    every pass and listed in ``skipped``.
    """

    def __init__(self, args, samples, rank=0, group_size=1):
        order = np.arange(len(samples))
        if args.eval_shuffle:
            order = np.random.RandomState(args.seed).permutation(len(samples))
        self.args = args
        self.samples = samples
        self.indices = [int(i) for i in order[rank::group_size]]
        self.transforms = build_transforms(args, False)
        self.skipped = []

    def batches(self):
        """Yield this rank's ``(images, labels)`` as numpy arrays; files found undecodable
        in an earlier pass are left out at once."""
        indices = [i for i in self.indices if self.samples[i][0] not in self.skipped]
        position = 0
        while position < len(indices):
            loader = create_loader(
                _source(self.samples, indices[position:]), batch_size=self.args.batch_size,
                drop_remainder=False, is_training=False, num_classes=self.args.num_classes,
                transform=self.transforms, num_parallel_workers=_workers(self.args))
            try:
                for images, labels in loader.create_tuple_iterator(num_epochs=1,
                                                                   output_numpy=True):
                    position += len(labels)
                    yield images, labels
                return
            except RuntimeError as exc:
                window = indices[position:position + _window(self.args)]
                path = _undecodable(exc, [self.samples[i][0] for i in window], position,
                                    self.args)
                indices.remove(next(i for i in window if self.samples[i][0] == path))
                self.skipped.append(path)
