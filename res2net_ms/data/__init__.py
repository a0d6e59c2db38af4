"""ImageFolder data: one scan of the folder, checks, loaders built from mindcv, digits data."""
from .folder import DataError, IMAGE_EXTENSIONS, check_imagefolder, write_digits_imagefolder
from .images import ImageError, bad_images, check_data_dir, image_problem, read_rgb
from .loaders import TrainData, build_transforms, create_eval_loader, epoch_order

__all__ = ["DataError", "IMAGE_EXTENSIONS", "ImageError", "TrainData", "bad_images",
           "build_transforms", "check_data_dir", "check_imagefolder", "create_eval_loader",
           "epoch_order", "image_problem", "read_rgb", "write_digits_imagefolder"]
