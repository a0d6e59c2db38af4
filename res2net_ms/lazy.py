"""Names a package offers but imports on first use, so that importing one light part of it (a
network part, the registry) does not import the heavy ones (the converter, the hub)."""
import importlib
import sys

__all__ = ["lazy_names"]


def lazy_names(package, names):
    """The module ``__getattr__`` of ``package`` that imports ``names`` (``{name: module
    relative to the package}``) on first use and keeps them."""
    def __getattr__(name):
        if name not in names:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(names[name], package), name)
        setattr(sys.modules[package], name, value)
        return value
    return __getattr__
