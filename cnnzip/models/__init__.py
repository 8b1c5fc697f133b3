"""The reference CNNs by name, and user models by ``package.module:factory``."""

from cnnzip.models.zoo import FACTORY, TRUST_HINT, ZOO, ZooEntry, build_network, check_name

__all__ = ["FACTORY", "TRUST_HINT", "ZOO", "ZooEntry", "build_network", "check_name"]
