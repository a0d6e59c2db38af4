"""Command-line and YAML configuration of ``train.py`` and ``validate.py``.

Every YAML key is a command-line flag of the same name (mindcv's names where mindcv has the
setting), the YAML file supplies the defaults and the command line overrides them. YAML is
checked strictly, because a misspelt key that is silently ignored costs a whole training run:
an unknown key or a value of the wrong type stops at once with a one-line :class:`ConfigError`.
"""
import argparse
import difflib
import os
import sys
from dataclasses import dataclass

import yaml

from .data import Preprocess
from .models import get_model_config
from .process import launched_by_launcher

__all__ = ["ConfigError", "build_parser", "parse_args", "peek_option", "str2bool",
           "config_to_yaml", "load_yaml_config", "resolve_model_defaults"]


class ConfigError(ValueError):
    """A configuration problem; the CLIs print it as one ``error:`` line and exit with 2."""


@dataclass(frozen=True)
class Option:
    """One setting: its flag, group, default and the type its YAML value must have.

    ``kind`` is one of ``int float bool str floats ints dict jitter``; ``length`` fixes the
    number of items of a list kind; ``optional`` lets the value be null (``None``), which
    means "derive it" (usually from the model config). ``bounds`` is the interval the value
    (each item of a list) must lie in, as text: ``"[1, inf)"``, ``"(0, 1]"``; ``ascending``
    asks a list to be in increasing order.
    """

    name: str
    group: str
    default: object
    kind: str
    help: str
    choices: tuple = None
    length: int = None
    optional: bool = False
    bounds: str = None
    ascending: bool = False


_O = Option
OPTIONS = [
    # System
    _O("mode", "system", 0, "int", "0: graph mode (compiled), 1: PyNative", choices=(0, 1)),
    _O("jit_level", "system", "O2", "str", "graph compile level", choices=("O0", "O1", "O2")),
    _O("device_target", "system", "auto", "str",
       "auto: the backend this MindSpore build was made for",
       choices=("auto", "Ascend", "GPU", "CPU")),
    _O("distribute", "system", False, "bool",
       "data-parallel training over every rank started by msrun/mpirun"),
    _O("num_parallel_workers", "system", 8, "int", "data pipeline workers per rank"),
    _O("seed", "system", 42, "int", "seed of the weights, the data order and the augmentation"),
    _O("deterministic", "system", False, "bool",
       "deterministic kernels, one data worker: bit-exact reruns and resumes, slower"),
    _O("log_interval", "system", 100, "int", "steps between log lines (without a progress bar)",
       bounds="[1, inf)"),
    _O("progress_bar", "system", "auto", "str", "auto: a bar when the output is a terminal",
       choices=("auto", "on", "off")),
    _O("dataset_sink_mode", "system", False, "bool",
       "sink the data to the device (Ascend/GPU: mindspore.data_sink; CPU has no sink)"),
    # Dataset
    _O("dataset", "dataset", "imagefolder", "str",
       "data_dir layout: one folder per class under each split (coco: a COCO instances "
       "JSON per split, for detectors)", choices=("imagefolder", "imagenet", "coco", "")),
    _O("data_dir", "dataset", None, "str", "folder holding the train and val splits",
       optional=True),
    _O("dataset_download", "dataset", False, "bool",
       "mindcv: download MNIST/CIFAR (not available here: use data_dir)"),
    _O("train_split", "dataset", "train", "str", "sub-folder of data_dir used for training"),
    _O("val_split", "dataset", "val", "str", "sub-folder of data_dir used for validation"),
    _O("shuffle", "dataset", True, "bool", "shuffle the training data every epoch"),
    _O("num_samples", "dataset", None, "int", "train on a random subset of this size per epoch",
       optional=True),
    _O("batch_size", "dataset", 128, "int", "images per step and per rank", bounds="[1, inf)"),
    _O("drop_remainder", "dataset", True, "bool", "drop the last incomplete training batch"),
    _O("eval_shuffle", "dataset", False, "bool", "shuffle the validation order (metrics equal)"),
    _O("aug_repeats", "dataset", 0, "int",
       "repeated augmentation: each image this many times per epoch, spread over ranks",
       bounds="[0, inf)"),
    _O("skip_bad_images", "dataset", False, "bool",
       "name and count an undecodable image instead of stopping: in training it is replaced "
       "by its neighbour, in validation left out"),
    # Augmentation
    _O("image_resize", "augmentation", None, "int", "input size (null: the model's)",
       optional=True),
    _O("scale", "augmentation", [0.08, 1.0], "floats", "random-resized-crop area range",
       length=2, bounds="(0, inf)", ascending=True),
    _O("ratio", "augmentation", [0.75, 1.333], "floats", "random-resized-crop aspect range",
       length=2, bounds="(0, inf)", ascending=True),
    _O("hflip", "augmentation", 0.5, "float", "horizontal flip probability", bounds="[0, 1]"),
    _O("vflip", "augmentation", 0.0, "float", "vertical flip probability", bounds="[0, 1]"),
    _O("interpolation", "augmentation", None, "str", "resize interpolation (null: the model's)",
       choices=("bilinear", "bicubic", "nearest", "area"), optional=True),
    _O("crop_pct", "augmentation", None, "float",
       "evaluation: resize to image_resize / crop_pct, centre-crop (null: the model's)",
       optional=True, bounds="(0, 1]"),
    _O("color_jitter", "augmentation", None, "jitter",
       "brightness/contrast/saturation(/hue) jitter: one value or 3-4 values", optional=True),
    _O("auto_augment", "augmentation", None, "str",
       "mindcv policy, e.g. randaug-m9-mstd0.5, autoaug, trivialaugwide, augmix",
       optional=True),
    _O("re_prob", "augmentation", 0.0, "float", "random erasing probability", bounds="[0, 1]"),
    _O("re_scale", "augmentation", [0.02, 0.33], "floats", "random erasing area range",
       length=2, bounds="(0, inf)", ascending=True),
    _O("re_ratio", "augmentation", [0.3, 3.3], "floats", "random erasing aspect range",
       length=2, bounds="(0, inf)", ascending=True),
    _O("re_value", "augmentation", 0, "int", "random erasing fill value"),
    _O("re_max_attempts", "augmentation", 10, "int", "random erasing: tries to find an area",
       bounds="[1, inf)"),
    _O("aug_splits", "augmentation", 0, "int",
       "mindcv: 3 = clean + two auto_augment views of every image in each batch (mindcv's "
       "only split count)", choices=(0, 3)),
    _O("mixup", "augmentation", 0.0, "float", "mixup alpha (0: off)", bounds="[0, inf)"),
    _O("cutmix", "augmentation", 0.0, "float", "cutmix alpha (0: off)", bounds="[0, inf)"),
    _O("cutmix_prob", "augmentation", 1.0, "float", "probability of mixing a batch",
       bounds="[0, 1]"),
    _O("mean", "augmentation", None, "floats", "per-channel mean in 0-255 (null: the model's)",
       length=3, optional=True),
    _O("std", "augmentation", None, "floats", "per-channel std in 0-255 (null: the model's)",
       length=3, optional=True),
    # Model
    _O("model", "model", "res2net50_26w_4s", "str", "a name from res2net_ms.list_models()"),
    _O("model_kwargs", "model", {}, "dict",
       "extra create_model arguments, e.g. {layers: [1, 1, 1, 1]}"),
    _O("num_classes", "model", 1000, "int", "classifier outputs; must match the data",
       bounds="[1, inf)"),
    _O("in_channels", "model", 3, "int", "input channels", bounds="[1, inf)"),
    _O("drop_rate", "model", 0.0, "float", "dropout before the classifier", bounds="[0, 1]"),
    _O("drop_path_rate", "model", 0.0, "float", "stochastic depth", bounds="[0, 1]"),
    _O("frozen_stages", "model", -1, "int", "freeze the stem and stages 1..k (-1: none)"),
    _O("norm_eval", "model", False, "bool", "keep every BatchNorm in inference mode"),
    _O("pretrained", "model", False, "bool", "start from the model's official weights"),
    _O("ckpt_path", "model", "", "str",
       "weights to start from (train) or to evaluate (validate): .ckpt, .pth, .safetensors"),
    _O("ema", "model", False, "bool",
       "train: keep an EMA of the weights; validate: evaluate a checkpoint's EMA weights"),
    _O("ema_decay", "model", 0.9999, "float", "EMA decay"),
    _O("resume", "model", "", "str",
       "training checkpoint to continue from (any file name); auto: the newest in "
       "ckpt_save_dir, or a fresh start when there is none"),
    _O("resume_opt", "model", False, "bool",
       "mindcv: with ckpt_path, continue that training checkpoint (as --resume)"),
    _O("overwrite", "model", False, "bool",
       "start afresh in a ckpt_save_dir that holds another run (its files are deleted)"),
    _O("epoch_size", "model", 90, "int", "training epochs", bounds="[1, inf)"),
    _O("ckpt_save_dir", "model", "./ckpt", "str",
       "checkpoints, metrics.jsonl, train.log and the resolved config"),
    _O("ckpt_save_interval", "model", 1, "int", "also keep a numbered checkpoint every N epochs",
       bounds="[1, inf)"),
    _O("keep_checkpoint_max", "model", 10, "int", "numbered checkpoints kept", bounds="[1, inf)"),
    _O("ckpt_save_policy", "model", "latest_k", "str",
       "which numbered checkpoints are kept: the latest, or the best by validation top-1",
       choices=("latest_k", "top_k"), optional=True),
    _O("ckpt_save_steps", "model", 0, "int",
       "also write last.ckpt every N steps inside an epoch (0: at epoch ends only)",
       bounds="[0, inf)"),
    _O("max_nonfinite_steps", "model", 5, "int",
       "without a dynamic loss scale: stop after this many non-finite losses in a row",
       bounds="[1, inf)"),
    _O("val_while_train", "model", False, "bool", "validate during training (needed for best)"),
    _O("val_interval", "model", 1, "int", "epochs between validations", bounds="[1, inf)"),
    # Loss
    _O("loss", "loss", "CE", "str", "mindcv loss name", choices=("CE", "BCE")),
    _O("label_smoothing", "loss", 0.0, "float", "label smoothing", bounds="[0, 1]"),
    _O("reduction", "loss", "mean", "str", "loss reduction over the batch",
       choices=("mean", "sum")),
    _O("aux_factor", "loss", 0.0, "float",
       "mindcv: weight of an auxiliary head's loss (Res2Net has none)"),
    # Optimizer
    _O("opt", "optimizer", "momentum", "str", "mindcv optimizer",
       choices=("sgd", "momentum", "nesterov", "adam", "adamw", "lion", "nadam", "adan",
                "rmsprop", "adagrad", "lamb")),
    _O("momentum", "optimizer", 0.9, "float", "momentum"),
    _O("use_nesterov", "optimizer", False, "bool", "Nesterov momentum"),
    _O("weight_decay", "optimizer", 1e-4, "float", "weight decay"),
    _O("weight_decay_filter", "optimizer", "disable", "str",
       "norm_and_bias: no weight decay on BatchNorm and bias parameters",
       choices=("disable", "auto", "norm_and_bias")),
    _O("clip_grad", "optimizer", False, "bool", "clip gradients by global norm"),
    _O("clip_value", "optimizer", 15.0, "float", "global-norm limit"),
    _O("eps", "optimizer", 1e-10, "float", "adaptive optimizers: term added to the denominator"),
    _O("layer_decay", "optimizer", None, "float",
       "layer-wise learning-rate decay: stage k of n gets lr * decay^(n-k)", optional=True,
       bounds="(0, 1]"),
    _O("gradient_accumulation_steps", "optimizer", 1, "int",
       "average the gradients of N batches per update", bounds="[1, inf)"),
    # Scheduler
    _O("scheduler", "scheduler", "cosine_decay", "str", "mindcv learning-rate schedule",
       choices=("constant", "cosine_decay", "warmup_cosine_decay", "step_decay",
                "multi_step_decay", "exponential_decay", "polynomial_decay", "one_cycle",
                "cyclic")),
    _O("lr", "scheduler", 0.1, "float", "peak learning rate", bounds="(0, inf)"),
    _O("min_lr", "scheduler", 1e-6, "float", "final learning rate of cosine decay"),
    _O("warmup_epochs", "scheduler", 3, "int", "linear warm-up epochs", bounds="[0, inf)"),
    _O("warmup_factor", "scheduler", 0.0, "float", "warm-up starts at lr * warmup_factor"),
    _O("decay_epochs", "scheduler", None, "int",
       "cosine: decay length; step: epochs per step (null: epoch_size - warmup_epochs)",
       optional=True),
    _O("decay_rate", "scheduler", 0.1, "float", "factor of step / multi-step decay"),
    _O("multi_step_decay_milestones", "scheduler", [30, 60, 90], "ints",
       "epochs of multi-step decay"),
    _O("lr_epoch_stair", "scheduler", False, "bool", "change the learning rate once per epoch"),
    _O("num_cycles", "scheduler", 1, "int", "cosine cycles", bounds="[1, inf)"),
    _O("cycle_decay", "scheduler", 1.0, "float", "peak decay per cosine cycle"),
    # AMP
    _O("amp_level", "amp", "auto", "str", "mixed precision (auto: O0 on CPU, O2 elsewhere)",
       choices=("auto", "O0", "O1", "O2", "O3")),
    _O("loss_scale", "amp", 1.0, "float", "(initial) loss scale", bounds="(0, inf)"),
    _O("loss_scale_type", "amp", "fixed", "str", "fixed or dynamic loss scale",
       choices=("fixed", "dynamic")),
    _O("loss_scale_factor", "amp", 2.0, "float", "dynamic loss scale: change factor"),
    _O("scale_window", "amp", 2000, "int", "dynamic loss scale: good steps before growing",
       bounds="[1, inf)"),
    _O("drop_overflow_update", "amp", False, "bool",
       "fixed loss scale: skip steps whose gradients overflow (dynamic always skips)"),
    _O("amp_cast_list", "amp", None, "str",
       "cells cast by amp_level instead of mindcv's lists, e.g. '[nn.BatchNorm2d]'",
       optional=True),
    _O("val_amp_level", "amp", None, "str",
       "validate.py's mixed precision (null: amp_level)", choices=("O0", "O1", "O2", "O3"),
       optional=True),
    # Detection: mmdetection's settings under mmdetection's names
    _O("detector", "detection", None, "str",
       "train or evaluate this detector of res2net_ms.list_detectors() on a COCO-format "
       "data_dir (null: a classifier on class folders)", optional=True),
    _O("train_ann_file", "detection", None, "str",
       "COCO instances JSON of train_split, in data_dir (null: "
       "annotations/instances_<train_split>.json)", optional=True),
    _O("val_ann_file", "detection", None, "str",
       "COCO instances JSON of val_split, in data_dir (null: "
       "annotations/instances_<val_split>.json)", optional=True),
    _O("img_scale", "detection", [1333, 800], "ints",
       "keep-ratio resize into (long side, short side), mmdetection's Resize scale",
       length=2, bounds="[32, inf)"),
    _O("train_cfg", "detection", {}, "dict",
       "changes to mmdetection's train_cfg, e.g. {rcnn: {sampler: {num: 256}}}"),
    _O("test_cfg", "detection", {}, "dict",
       "changes to mmdetection's test_cfg, e.g. {rcnn: {score_thr: 0.3}}"),
    _O("roi_sampling_ratio", "detection", 2, "int",
       "RoIAlign samples per bin and axis (training needs a fixed count)", bounds="[1, inf)"),
    _O("warmup_iters", "detection", 500, "int", "linear warm-up iterations (mmdetection's)",
       bounds="[0, inf)"),
    _O("warmup_ratio", "detection", 0.001, "float", "warm-up starts at lr * warmup_ratio",
       bounds="(0, 1]"),
    _O("auto_scale_lr", "detection", False, "bool",
       "scale lr by the total batch (batch_size x ranks) / base_batch_size, as mmdetection's "
       "--auto-scale-lr"),
    _O("base_batch_size", "detection", 16, "int", "the total batch lr is given for",
       bounds="[1, inf)"),
]
OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}
GROUPS = ("system", "dataset", "augmentation", "model", "loss", "optimizer", "scheduler", "amp",
          "detection")
# Run invocations rather than settings: not accepted in YAML files, not saved.
_NOT_IN_YAML = ("config",)
_NOT_SAVED = ("config", "resume")

_KIND_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false",
               "str": "a string", "floats": "a list of numbers", "ints": "a list of integers",
               "dict": "a mapping", "jitter": "a number or a list of 3-4 numbers"}


def str2bool(text):
    """``true``/``false`` (also 1/0, yes/no, on/off) as the command lines read booleans."""
    low = text.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _nullable(convert):
    def parse(text):
        return None if text.lower() in ("none", "null") else convert(text)
    parse.__name__ = convert.__name__
    return parse


def _yaml_mapping(text):
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"not YAML: {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping like '{{layers: [1, 1, 1, 1]}}', "
                                         f"got '{text}'")
    return value


class _Parser(argparse.ArgumentParser):
    """Command-line mistakes become a one-line ConfigError instead of a usage dump."""

    def error(self, message):
        raise ConfigError(" ".join(message.split()) + " (see --help)")


def build_parser(prog=None, description=None):
    """The argparse parser of every option, in mindcv-style groups."""
    parser = _Parser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("-c", "--config", default=None,
                        help="YAML file of options (the command line overrides it)")
    groups = {g: parser.add_argument_group(g) for g in GROUPS}
    for opt in OPTIONS:
        kwargs = dict(dest=opt.name, default=opt.default, help=opt.help)
        if opt.kind in ("floats", "ints", "jitter"):
            kwargs["type"] = float if opt.kind != "ints" else int
            kwargs["nargs"] = opt.length or "+"
            kwargs["metavar"] = opt.name.upper()
        elif opt.kind == "dict":
            kwargs["type"] = _yaml_mapping
        else:
            base = {"int": int, "float": float, "bool": str2bool, "str": str}[opt.kind]
            kwargs["type"] = _nullable(base) if opt.optional else base
        if opt.choices:
            kwargs["choices"] = opt.choices + ((None,) if opt.optional else ())
            kwargs["metavar"] = "{" + ",".join(str(c) for c in opt.choices) + "}"
        groups[opt.group].add_argument(f"--{opt.name}", **kwargs)
    return parser


def _check_value(opt, value, source):
    """The YAML value converted to the option's type, or ConfigError naming key and file."""
    def fail(extra=""):
        shown = repr(value) if not isinstance(value, str) else f"'{value}'"
        raise ConfigError(f"{source}: key '{opt.name}' expects {_KIND_NAMES[opt.kind]}{extra}, "
                          f"got {shown} ({type(value).__name__})")

    def is_number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if value is None:
        if opt.optional:
            return None
        fail()
    kind = opt.kind
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            fail()
    elif kind == "float":
        if not is_number(value):
            fail()
        value = float(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            fail()
    elif kind == "str":
        if not isinstance(value, str):
            fail()
    elif kind == "dict":
        if not isinstance(value, dict):
            fail()
    elif kind == "jitter":
        if is_number(value):
            value = float(value)
        elif (isinstance(value, (list, tuple)) and len(value) in (1, 3, 4)
              and all(is_number(v) for v in value)):
            value = [float(v) for v in value]
        else:
            fail()
    elif kind in ("floats", "ints"):
        item_ok = is_number if kind == "floats" else (
            lambda v: isinstance(v, int) and not isinstance(v, bool))
        length = f" of length {opt.length}" if opt.length else ""
        if not isinstance(value, (list, tuple)) or not all(item_ok(v) for v in value):
            fail(length)
        if opt.length and len(value) != opt.length:
            fail(length)
        value = [float(v) if kind == "floats" else v for v in value]
    if opt.choices and value not in opt.choices:
        raise ConfigError(f"{source}: key '{opt.name}' must be one of "
                          f"{', '.join(map(str, opt.choices))}; got {value!r}")
    return value


def _closest_keys(key):
    names = [o.name for o in OPTIONS]
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    if not close:
        close = [n for n in names if key.lower() in n or n in key.lower()][:3]
    return close


def load_yaml_config(text, source, lenient=False):
    """Check a YAML document of options; returns ``{key: typed value}``.

    ``source`` names the file in error messages. ``lenient`` (for configs stored in
    checkpoints by another version) drops unknown or mistyped keys with a warning instead.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{source}: not valid YAML: {detail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of option: value, got "
                          f"{type(data).__name__}")
    values, dropped = {}, []
    for key, value in data.items():
        opt = OPTIONS_BY_NAME.get(key) if isinstance(key, str) else None
        try:
            if opt is None or key in _NOT_IN_YAML:
                close = _closest_keys(str(key))
                hint = (f"closest valid keys: {', '.join(close)}" if close
                        else "see --help for the valid keys")
                raise ConfigError(f"{source}: unknown key '{key}'; {hint}")
            values[key] = _check_value(opt, value, source)
        except ConfigError:
            if not lenient:
                raise
            dropped.append(str(key))
    if dropped:
        print(f"warning: {source}: ignored {', '.join(dropped)} (unknown or of another type in "
              f"this version)", file=sys.stderr)
    return values


def _read_config_file(path):
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        return load_yaml_config(f.read(), path)


def _in_bounds(value, bounds):
    low, high = (float(v) for v in bounds[1:-1].split(","))
    return ((value > low if bounds[0] == "(" else value >= low)
            and (value < high if bounds[-1] == ")" else value <= high))


def _bounds_text(bounds):
    low, high = (v.strip() for v in bounds[1:-1].split(","))
    if high == "inf":
        return f"at least {low}" if bounds[0] == "[" else f"greater than {low}"
    return f"in {bounds}"


def _check_semantics(args):
    """The ranges of the ``OPTIONS`` table, then the checks across options."""
    try:
        get_model_config(args.model)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None
    if isinstance(args.color_jitter, list) and len(args.color_jitter) == 1:
        args.color_jitter = args.color_jitter[0]
    if isinstance(args.color_jitter, list) and len(args.color_jitter) not in (3, 4):
        raise ConfigError("color_jitter takes one value or 3-4 values")
    for opt in OPTIONS:
        value = getattr(args, opt.name)
        items = value if isinstance(value, list) else [value]
        if opt.bounds and value is not None and not all(_in_bounds(v, opt.bounds)
                                                        for v in items):
            raise ConfigError(f"{opt.name} must be {_bounds_text(opt.bounds)}"
                              f"{' (each value)' if isinstance(value, list) else ''}, "
                              f"got {value}")
        if opt.ascending and items != sorted(items):
            raise ConfigError(f"{opt.name} must be [low, high] with low <= high, got {value}")
    if args.ema and not 0 < args.ema_decay < 1:
        raise ConfigError(f"ema_decay must be in (0, 1), got {args.ema_decay}")
    if args.aug_splits and not args.auto_augment:
        raise ConfigError("aug_splits needs an auto_augment policy for its two augmented views")
    if args.ckpt_save_policy == "top_k" and not args.val_while_train:
        raise ConfigError("ckpt_save_policy top_k keeps the best checkpoints by validation "
                          "top-1: set val_while_train: true, or use latest_k")


def peek_option(argv, name):
    """The value of option ``name`` on the command line ``argv`` (its default if absent)."""
    pre, _ = build_parser().parse_known_args(list(argv))
    return getattr(pre, name)


def parse_args(argv=None, stored_config=None, prog=None, description=None):
    """Parse the command line over the YAML file of ``--config``.

    ``stored_config`` is ``(yaml_text, source)``, the config a training checkpoint stores: the
    base when no ``--config`` is given, so that ``train.py --resume ckpt/last.ckpt`` and
    ``validate.py --ckpt_path ckpt/best.ckpt`` need no other flags (the engine's command line
    reads it from the checkpoint). Raises :class:`ConfigError`.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(prog, description)
    pre, _ = parser.parse_known_args(argv)
    base = {}
    if pre.config:
        base = _read_config_file(pre.config)
    elif stored_config:
        base = load_yaml_config(stored_config[0], stored_config[1], lenient=True)
        # How this run is launched decides, not how the stored run was.
        base["distribute"] = launched_by_launcher()
    parser.set_defaults(**base)
    args = parser.parse_args(argv)
    _check_semantics(args)
    return args


def resolve_model_defaults(args):
    """Fill the options left null from the model's config: the input (size, crop,
    interpolation, mean/std, as :meth:`~res2net_ms.data.Preprocess.of_model` derives them)
    and the length of the decay."""
    pre = Preprocess.of_model(args.model, args.image_resize, args.crop_pct, args.interpolation,
                              args.mean, args.std)
    args.image_resize, args.crop_pct, args.interpolation = (pre.image_size, pre.crop_pct,
                                                            pre.interpolation)
    args.mean, args.std = list(pre.mean), list(pre.std)
    if args.decay_epochs is None:
        args.decay_epochs = max(1, args.epoch_size - args.warmup_epochs)
    return args


def config_to_yaml(args):
    """The options of ``args`` as YAML (a valid ``--config``), grouped like ``--help``, run
    invocations left out."""
    values = vars(args)
    lines = []
    for group in GROUPS:
        block = {o.name: values[o.name] for o in OPTIONS
                 if o.group == group and o.name in values and o.name not in _NOT_SAVED}
        if not block:
            continue
        lines.append(f"# {group}")
        lines.append(yaml.dump(_plain(block), Dumper=_Dumper, sort_keys=False,
                               default_flow_style=False).rstrip())
    return "\n".join(lines) + "\n"


class _Dumper(yaml.SafeDumper):
    """Block mappings, one option a line; lists inline (``scale: [0.08, 1.0]``)."""


_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=True))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
