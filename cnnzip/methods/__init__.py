"""One file per method: a frozen config dataclass and its registered step; ``base`` holds what
they share (the context, the registry, fine-tuning), ``allocation`` and ``calibration`` helpers
that more than one method uses. A method never imports another method."""

from cnnzip.methods import channel, lowrank, merge, prune, quant, share  # they register, in order
from cnnzip.methods.base import STEPS, Context, Step, apply, step_of

__all__ = ["Context", "STEPS", "Step", "apply", "channel", "lowrank", "merge", "prune", "quant",
           "share", "step_of"]
