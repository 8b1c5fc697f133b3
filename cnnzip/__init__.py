"""cnnzip: compress trained convolutional networks into small, fast, deployable artifacts."""

__version__ = "0.1.0"
