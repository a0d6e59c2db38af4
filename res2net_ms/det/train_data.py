"""A COCO-format training set for the detectors: each image with its targets (what
:func:`~.train_inputs.collate_train` takes), mmdetection's ``RandomFlip`` and its sampler's
order.

As mmdetection's ``CocoDataset`` in training: crowd regions are left out (its
``ignore_iof_thr=-1`` ignores them), images with no other box are not trained on
(``filter_empty_gt``), and labels follow the detector's class names.
"""
import numpy as np

from .coco import category_ids, check_images, image_paths, read_annotations
from .preprocess import load_image

__all__ = ["CocoTrainSet", "hflip"]


def hflip(image, target):
    """mmdetection's horizontal ``RandomFlip`` of an image and its target: x1' = W - x2."""
    width = image.shape[1]
    boxes = np.asarray(target["boxes"], np.float32)
    flipped = dict(target, boxes=np.stack([width - boxes[:, 2], boxes[:, 1],
                                           width - boxes[:, 0], boxes[:, 3]], axis=1))
    if "masks" in target:
        flipped["masks"] = np.ascontiguousarray(target["masks"][:, :, ::-1])
    return np.ascontiguousarray(image[:, ::-1]), flipped


class CocoTrainSet:
    """The annotated images of ``folder`` (``file_name`` entries of the instances JSON
    ``ann_file``), checked once when built: every image decodes and has its annotated size.

    Args:
        ann_file: a COCO instances JSON.
        folder: the folder of its images.
        class_names: the detector's labels, in order; each must be a category name of the
            file (default: the file's categories in id order).
        with_mask: whether targets hold masks (decoded from the annotations' segmentation).
    """

    def __init__(self, ann_file, folder, class_names=None, with_mask=False):
        self.coco = read_annotations(ann_file)
        categories = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self.class_names = tuple(class_names or (c["name"] for c in categories))
        self._label = {cat: label for label, cat in
                       enumerate(category_ids(self.class_names, categories))}
        self.with_mask = with_mask
        paths = image_paths(self.coco, folder)
        check_images(self.coco, paths)
        self.items = []
        for path, image in zip(paths, self.coco.dataset["images"]):
            annotations = [a for a in self.coco.imgToAnns[image["id"]]
                           if not a["iscrowd"] and a["category_id"] in self._label]
            if annotations:
                self.items.append((path, annotations))
        if not self.items:
            raise ValueError(f"'{ann_file}': no image has a box of the classes "
                             f"{', '.join(self.class_names)} (crowd regions do not count)")

    def __len__(self):
        return len(self.items)

    @property
    def max_boxes(self):
        return max(len(annotations) for _, annotations in self.items)

    def __getitem__(self, index):
        """``(RGB uint8 image, target)``: ``boxes`` (K, 4) x1, y1, x2, y2, ``labels`` (K,)
        and with masks ``masks`` (K, H, W) bool."""
        path, annotations = self.items[index]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in
                          (a["bbox"] for a in annotations)], np.float32)
        target = {"boxes": boxes,
                  "labels": np.array([self._label[a["category_id"]] for a in annotations],
                                     np.int32)}
        if self.with_mask:
            target["masks"] = np.stack([self.coco.annToMask(a) for a in annotations]) > 0
        return load_image(path), target

    def steps_per_epoch(self, batch_size, group_size=1):
        """Whole global batches of an epoch (the remainder waits for the next shuffle)."""
        return len(self) // (batch_size * group_size)

    def batches(self, batch_size, epoch, seed=0, flip_prob=0.5, start_step=0, rank=0,
                group_size=1):
        """The epoch's batches of ``(images, targets, seeds)`` for ``rank`` of ``group_size``
        from step ``start_step`` on: a shuffle and flips of the epoch's own (drawn from
        ``seed`` and ``epoch``), each global batch of ``batch_size * group_size`` images
        shared out by rank, and each image's seed for its sampler draws (seed, epoch, place
        in the epoch). An image thus gets the same flip and draw on one rank or many, and
        after a resume from any step."""
        rng = np.random.RandomState([seed, epoch])
        order = rng.permutation(len(self))
        flips = rng.rand(len(order)) < flip_prob
        size = batch_size * group_size
        for step in range(start_step, self.steps_per_epoch(batch_size, group_size)):
            places = range(step * size + rank * batch_size, step * size + (rank + 1) * batch_size)
            pairs = [hflip(*self[order[i]]) if flips[i] else self[order[i]] for i in places]
            yield ([image for image, _ in pairs], [target for _, target in pairs],
                   [(seed, epoch, i) for i in places])
