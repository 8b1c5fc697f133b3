"""The only code that mutates modules: remove channels (and, later, fold and merge layers)."""

from cnnzip.surgery.channels import remove_channels, silence_channels

__all__ = ["remove_channels", "silence_channels"]
