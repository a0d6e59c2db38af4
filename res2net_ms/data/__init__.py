"""ImageFolder data: one scan of the folder, checks, preprocessing, loaders built from mindcv,
digits data (classification and detection)."""
from .digits_detection import DIGIT_NAMES, write_digits_detection_set
from .folder import DataError, IMAGE_EXTENSIONS, check_imagefolder, write_digits_imagefolder
from .images import ImageError, bad_images, check_data_dir, image_problem, read_rgb
from .loaders import EvalData, TrainData, build_transforms, epoch_order
from .preprocess import Preprocess

__all__ = ["DataError", "EvalData", "IMAGE_EXTENSIONS", "ImageError", "Preprocess", "TrainData",
           "bad_images", "build_transforms", "check_data_dir", "check_imagefolder",
           "epoch_order", "image_problem", "read_rgb", "write_digits_detection_set",
           "write_digits_imagefolder", "DIGIT_NAMES"]
