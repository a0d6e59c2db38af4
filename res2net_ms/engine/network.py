"""The run's network: the zoo model the options describe, with its starting weights."""
from ..config import ConfigError
from ..factory import create_model
from ..weights import load_weights
from .reporting import logger

__all__ = ["build_network", "create_network"]


def build_network(args, for_training=True):
    """The zoo model of ``args``, without weights."""
    kwargs = dict(args.model_kwargs)
    if for_training:
        kwargs.update(drop_rate=args.drop_rate, drop_path_rate=args.drop_path_rate,
                      frozen_stages=args.frozen_stages, norm_eval=args.norm_eval)
    try:
        return create_model(args.model, num_classes=args.num_classes,
                            in_channels=args.in_channels, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build {args.model} with model_kwargs {args.model_kwargs}: "
                          f"{exc}") from None


def create_network(args, weights=None, for_training=True, use_ema=False):
    """:func:`build_network` in training or inference mode, with the weights of the file
    ``weights`` (if any, logged)."""
    network = build_network(args, for_training)
    network.set_train(for_training)
    if weights:
        prefix = "fine-tune: " if for_training else ""
        for note in load_weights(network, weights, network.default_cfg.name, use_ema=use_ema):
            logger.info("%s%s", prefix, note)
    return network
