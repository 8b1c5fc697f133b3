"""``sparse``: only the non-zero weights: per output channel a run of values and input offsets
(the offsets index a zero-point-padded copy of the input, so the inner loop has no bounds); the
input zero point is folded into the bias (``Σ w·(x − z) = Σ w·x − z·Σ w``), so each
multiply-accumulate is a load of the offset, the value and the input. The form any integer
layer can take."""

from __future__ import annotations

import numpy as np

from cnnzip.export.c.ctext import Emitted, carray, epilogue
from cnnzip.export.c.forms.base import RUNS, Form, nonzero_estimate, runs
from cnnzip.export.c.geometry import Geometry

_PER_MAC = {"conv": 9.0, "linear": 8.5}
_BYTES_PER_WEIGHT = 3.0  # a 2-byte offset beside the value


class Sparse(Form):
    name, order = "sparse", 10

    def estimate(self, layer, geo: Geometry) -> dict[str, float]:
        return nonzero_estimate(layer, geo, _PER_MAC[layer.kind], _BYTES_PER_WEIGHT)

    def emit(self, layer, name: str, geo: Geometry) -> Emitted:
        r = runs(layer, name, geo)
        data, const, common = r.data, r.const, r.common
        keep = r.weight != 0
        start = np.concatenate([[0], np.cumsum(keep.sum(1))])
        toff = "uint16_t" if r.off.max(initial=0) < 65536 else "uint32_t"
        data += (carray("int8_t", f"{name}_v", r.weight[keep])
                 + carray(toff, f"{name}_off", r.off[keep])
                 + carray("int32_t", f"{name}_start", start))
        const += int(keep.sum()) * (3 if toff == "uint16_t" else 5) + 4 * len(start)
        run = (f"        const uint8_t *src = {common['src']};\n"
               f"        const int8_t *v = {name}_v + {name}_start[o];\n"
               f"        const {toff} *f = {name}_off + {name}_start[o];\n"
               f"        const int n = {name}_start[o + 1] - {name}_start[o];\n")
        inner = "                    for (int j = 0; j < n; j++) acc += v[j] * p[f[j]];\n"
        text = RUNS.substitute(common, run=run, inner=inner, epilogue=epilogue(
            layer, name, f"(o * {common['poh']} + py) * {common['pow']} + px", "o", "best"))
        return Emitted(data, text, const, r.padded)


FORMS = (Sparse(),)
