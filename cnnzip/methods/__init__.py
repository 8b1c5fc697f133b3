"""One file per method: a frozen config dataclass and its registered step; ``base`` holds what
they share (the context, the registry, fine-tuning), ``allocation`` and ``calibration`` helpers
that more than one method uses (in ``shared``). A method never imports another method."""

from cnnzip.methods.base import STEPS, Context, RunState, Step, apply, step_of
from cnnzip.methods import prune, channel, lowrank, merge, share, quant  # they register, in order

__all__ = ["Context", "RunState", "STEPS", "Step", "apply", "channel", "lowrank", "merge", "prune",
           "quant", "share", "step_of"]
