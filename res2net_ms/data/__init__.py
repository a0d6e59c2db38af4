"""ImageFolder data: one scan of the folder, checks, loaders built from mindcv, digits data."""
from .folder import DataError, IMAGE_EXTENSIONS, check_imagefolder, write_digits_imagefolder
from .images import bad_images, check_data_dir, image_problem
from .loaders import TrainData, build_transforms, create_eval_loader, epoch_order

__all__ = ["DataError", "IMAGE_EXTENSIONS", "TrainData", "bad_images", "build_transforms",
           "check_data_dir", "check_imagefolder", "create_eval_loader", "epoch_order",
           "image_problem", "write_digits_imagefolder"]
