"""The cost model that chooses each conv or linear layer's kernel form
(:mod:`cnnzip.export.c.forms`: ``dense``, ``sparse``, ``unrolled``, ``simd``, ``simd-rows``,
``packed``, each in its own module with its fit, its estimate and its C).

Each form predicts its executed instructions on a Cortex-M4 from the multiply-accumulates it
performs and the outputs it requantizes, with per-form constants fitted to measurements on the
emulated Cortex-M4 (``benchmarks/c_speed.py`` prints the prediction beside the measurement);
:func:`choose` takes the fastest form (``fast``), the one with the fewest constant bytes
(``small``) or weighs both (``balanced``, the default).
"""

from __future__ import annotations

from cnnzip.errors import CnnzipError
from cnnzip.export.c.forms import FORMS, REGISTRY
from cnnzip.export.c.geometry import Geometry

POLICIES = ("balanced", "fast", "small", *FORMS)
# ``balanced``: one byte of constant data is worth this many instructions per inference
BYTE_WORTH = 8.0


def estimate(layer, geo: Geometry, form: str) -> dict[str, float]:
    """Predicted Cortex-M4 instructions and constant bytes of ``layer`` computed by ``form``."""
    return REGISTRY[form].estimate(layer, geo)


def choose(layer, geo: Geometry, policy: str = "balanced") -> str:
    """The form of ``layer``: ``policy`` itself when it names one the layer fits (else
    ``sparse``), or the one the cost model finds best among those it fits: fewest instructions
    (``fast``), fewest constant bytes (``small``) or fewest instructions plus
    :data:`BYTE_WORTH` per constant byte (``balanced``). Float layers are always dense; each
    form says what it fits (straight-line code that would take the compiler minutes does not;
    nor a packed layer with too many distinct weights)."""
    if policy not in POLICIES:
        raise CnnzipError(f"kernels {policy!r}: choose one of {', '.join(POLICIES)}")
    if layer.weight.dtype.kind == "f":
        return "dense"
    allowed = [name for name, form in REGISTRY.items() if form.fits(layer, geo)]
    if policy in FORMS:
        return policy if policy in allowed else "sparse"
    worth = {"fast": (1.0, 0.0), "small": (1e-9, 1.0), "balanced": (1.0, BYTE_WORTH)}[policy]

    def cost(form: str) -> float:
        e = estimate(layer, geo, form)
        return worth[0] * e["instructions"] + worth[1] * e["const_bytes"]
    return min(allowed, key=cost)
