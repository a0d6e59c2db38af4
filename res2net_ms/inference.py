"""What predict, export and Grad-CAM share: the network a checkpoint describes, with its
preprocessing and class names, and the images to run it on.

* a training checkpoint of this project carries its config (model, ``model_kwargs``,
  ``num_classes``, image size, crop, mean/std) and its class-folder names;
* a converted ``.ckpt`` or a PyTorch/safetensors file is read as the zoo model named, with as
  many classes as its classifier has, and the model's own preprocessing;
* ``pretrained`` takes the official ImageNet weights (:mod:`res2net_ms.hub`);
* an exported ``.mindir`` (:mod:`res2net_ms.export`) carries what its export knew.
"""
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import resources

import mindspore as ms
from mindspore import nn
from mindspore.train import mind_ir_pb2

from .config import load_yaml_config, str2bool
from .convert import convert_checkpoint, load_into, read_state
from .data import IMAGE_EXTENSIONS, Preprocess
from .data import read_rgb as read_image
from .factory import create_model
from .hub import pretrained_path
from .models import get_model_config
from .process import warn_slow_mindspore
from .run_state import read_run_state

__all__ = ["InputError", "LoadedModel", "Preprocess", "add_weights_arguments",
           "find_images", "imagenet_classes", "load_model", "read_image", "set_mode",
           "MINDIR_KEY"]

# The key of this project's metadata in an exported MINDIR's ``user_info``.
MINDIR_KEY = "res2net_ms"


class InputError(ValueError):
    """Input the tools cannot use (file, folder, checkpoint, option); the message is one line."""


@dataclass
class LoadedModel:
    """A network ready for inference, with what is needed to feed it and name its outputs.

    ``labels`` are the class names (as loaded: those the file stores, or None, until
    :func:`load_model` settles them); ``labels_given`` says whether they are the user's or the
    file's own names rather than defaults; ``fixed_batch`` is an exported file's batch size.
    """

    network: nn.Cell
    model: str
    num_classes: int
    preprocess: Preprocess
    labels: list
    source: str
    labels_given: bool = False
    fixed_batch: int = None
    model_kwargs: dict = field(default_factory=dict)

    def metadata(self):
        """What an exported MINDIR stores so that predict can use it alone."""
        return {"model": self.model, "num_classes": self.num_classes,
                "model_kwargs": self.model_kwargs, "preprocess": asdict(self.preprocess),
                "labels": self.labels if self.labels_given else None}


def imagenet_classes():
    """The 1000 ImageNet-1k class names, in the index order of the official weights."""
    text = resources.files("res2net_ms").joinpath("resources/imagenet1k_classes.txt")
    return text.read_text(encoding="utf-8").splitlines()


def _read_labels(path, num_classes):
    try:
        with open(path, encoding="utf-8") as f:
            labels = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read labels file {path}: {exc}") from None
    if len(labels) != num_classes:
        raise InputError(f"labels file {path} has {len(labels)} names, the model has "
                         f"{num_classes} classes: give one name a line, in class order")
    return labels


def _default_labels(num_classes, stored=None):
    if stored and len(stored) == num_classes:
        return list(stored), True
    if num_classes == 1000:
        return imagenet_classes(), False
    return [str(i) for i in range(num_classes)], False


def _from_training_checkpoint(path, state, model, ema):
    """The network and preprocessing of the run that wrote ``path``, with its EMA weights when
    it has them (what its validation used), unless ``ema`` is False."""
    config = load_yaml_config(state.config, f"{path} (stored config)", lenient=True)
    name = get_model_config(config.get("model") or state.model).name
    if model and get_model_config(model).name != name:
        raise InputError(f"{path} was trained as {name}, not {model}: leave --model out or "
                         f"pass {name}")
    if config.get("in_channels", 3) != 3:
        raise InputError(f"{path} was trained on {config['in_channels']}-channel input: these "
                         f"tools read RGB images")
    if ema and not state.has_ema:
        raise InputError(f"{path} holds no EMA weights: leave --ema out")
    kwargs = dict(config.get("model_kwargs") or {})
    num_classes = int(config["num_classes"])
    network = create_model(name, num_classes=num_classes, **kwargs)
    load_into(network, path, model_name=name, use_ema=state.has_ema if ema is None else ema)
    preprocess = Preprocess.of_model(name, config.get("image_resize"), config.get("crop_pct"),
                                     config.get("interpolation"), config.get("mean"),
                                     config.get("std"))
    return LoadedModel(network, name, num_classes, preprocess, state.classes or None, path,
                       model_kwargs=kwargs)


def _from_weights_file(path, model):
    """A converted or PyTorch checkpoint: the zoo model, with its classifier's class count."""
    if not model:
        raise InputError(f"--model is required for {path} (only training checkpoints and "
                         f".mindir files say which model they hold)")
    cfg = get_model_config(model)
    state = read_state(path)  # read once, for the class count and the weights
    weights, _ = convert_checkpoint(state, cfg.name)
    head = weights.get(f"{cfg.classifier}.weight")
    if head is None:
        raise InputError(f"{path} holds no classifier (a backbone checkpoint): predictions "
                         f"need one; fine-tune it first")
    num_classes = int(head.shape[0])
    network = create_model(cfg.name, num_classes=num_classes, checkpoint_path=state)
    return LoadedModel(network, cfg.name, num_classes, Preprocess.of_model(cfg), None, path)


def _mindir_info(path):
    """The input shape, output classes and stored metadata of an exported MINDIR."""
    proto = mind_ir_pb2.ModelProto()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
        dims = list(proto.graph.input[0].tensor[0].dims)
        out_dims = list(proto.graph.output[0].tensor[0].dims)
    except Exception as exc:  # protobuf raises DecodeError, IndexError ... for other files
        raise InputError(f"{path}: not a readable MINDIR file ({type(exc).__name__})") from None
    info = next((json.loads(e.value) for e in proto.user_info if e.key == MINDIR_KEY), {})
    return dims, out_dims, info


def _from_mindir(path, model):
    dims, out_dims, info = _mindir_info(path)
    name = info.get("model") or model
    if not name:
        raise InputError(f"{path} was not exported by res2net_ms: pass --model for its "
                         f"preprocessing")
    if len(dims) != 4 or dims[1] != 3:
        raise InputError(f"{path} takes input of shape {dims}, not (N, 3, H, W) images")
    stored = info.get("preprocess")
    preprocess = (Preprocess(**{**stored, "mean": tuple(stored["mean"]),
                                "std": tuple(stored["std"])}) if stored
                  else Preprocess.of_model(name, image_size=dims[-1]))
    return LoadedModel(nn.GraphCell(ms.load(path)), get_model_config(name).name,
                       int(info.get("num_classes") or out_dims[-1]), preprocess,
                       info.get("labels"), path, fixed_batch=int(dims[0]),
                       model_kwargs=info.get("model_kwargs") or {})


def _from_pretrained(model, cache_dir):
    if not model:
        raise InputError("--model is required with --pretrained")
    name = get_model_config(model).name
    source = pretrained_path(name, cache_dir)
    return LoadedModel(create_model(name, checkpoint_path=source), name, 1000,
                       Preprocess.of_model(name), None, source)


def _load(model, ckpt_path, pretrained, cache_dir, ema):
    """The :class:`LoadedModel` the file (or the official weights) describes."""
    if not ckpt_path:
        if pretrained:
            return _from_pretrained(model, cache_dir)
        raise InputError("no weights: pass --ckpt_path FILE or --pretrained True")
    path = os.fspath(ckpt_path)
    if not os.path.isfile(path):
        raise InputError(f"checkpoint {path} does not exist")
    if path.lower().endswith(".mindir"):
        return _from_mindir(path, model)
    state = read_run_state(path)
    if state is not None and state.config:
        return _from_training_checkpoint(path, state, model, ema)
    return _from_weights_file(path, model)


def load_model(model=None, ckpt_path=None, pretrained=False, cache_dir=None, labels=None,
               ema=None):
    """The network to run, with its preprocessing and class names.

    Args:
        model: zoo name (optional for training checkpoints and exported ``.mindir`` files).
        ckpt_path: a training checkpoint, a converted ``.ckpt``, a PyTorch/safetensors file
            or an exported ``.mindir``.
        pretrained: the official ImageNet weights of ``model`` (when no ``ckpt_path``).
        cache_dir: cache folder of the official weights.
        labels: a text file with one class name a line (default: the training checkpoint's
            class folders, ImageNet names for 1000 classes, else the class indices).
        ema: a training checkpoint's EMA weights (None: when it has them, as its validation).

    Raises :class:`InputError` (or the converter's ``ValueError``) with one line.
    """
    loaded = _load(model, ckpt_path, pretrained, cache_dir, ema)
    loaded.network.set_train(False)
    if labels:
        loaded.labels, loaded.labels_given = _read_labels(labels, loaded.num_classes), True
    else:
        loaded.labels, loaded.labels_given = _default_labels(loaded.num_classes, loaded.labels)
    return loaded


def add_weights_arguments(parser, mindir=False):
    """The options naming the weights, shared by predict, export and cam."""
    what = "training checkpoint, converted .ckpt, .pth/.safetensors" + (
        " or .mindir" if mindir else "")
    parser.add_argument("--model", help="zoo model name (optional for training checkpoints"
                                        + (" and .mindir files)" if mindir else ")"))
    parser.add_argument("--ckpt_path", "--ckpt-path", dest="ckpt_path", help=what)
    parser.add_argument("--pretrained", type=str2bool, default=False,
                        help="the official ImageNet weights of --model (downloaded once)")
    parser.add_argument("--ema", type=str2bool, default=None,
                        help="a training checkpoint's EMA weights (default: when it has them)")


def find_images(inputs):
    """Image files of ``inputs`` (files, or folders searched recursively), in order.

    A file is taken whatever its name (decoding says whether it is an image); in a folder,
    files with an image extension. Raises :class:`InputError` for a missing path or a folder
    without images.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isfile(item):
            found.append(item)
        elif os.path.isdir(item):
            inside = sorted(
                os.path.join(root, name) for root, _, names in os.walk(item) for name in names
                if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS)
            if not inside:
                raise InputError(f"folder {item} holds no images "
                                 f"({'/'.join(IMAGE_EXTENSIONS)})")
            found += inside
        else:
            raise InputError(f"{item} does not exist")
    if not found:
        raise InputError("no images given")
    return found


def set_mode(mode):
    """Graph mode with jit_level O2, as training runs (0), or PyNative (1); warns once on a
    MindSpore release that is slow on this device."""
    warn_slow_mindspore()
    if mode == 0:
        ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": "O2"})
    else:
        ms.set_context(mode=ms.PYNATIVE_MODE)
