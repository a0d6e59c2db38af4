"""The converter's error types: every one is a ``ValueError`` with a one-line message."""

__all__ = ["CheckpointFormatError", "UnsafeCheckpointError", "CheckpointMismatchError"]


class CheckpointFormatError(ValueError):
    """The file is not a readable checkpoint (truncated, corrupt or unknown format)."""


class UnsafeCheckpointError(ValueError):
    """The checkpoint's pickle references a global outside the allow-list."""


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the network (missing or wrongly shaped parameters)."""
