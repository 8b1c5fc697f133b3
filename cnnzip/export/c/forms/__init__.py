"""The kernel forms of conv and linear layers, one module each: every module here that defines
``FORMS`` (instances of :class:`~cnnzip.export.c.forms.base.Form`) is found and its forms
registered, ordered by ``order``. A new form is one new module in this folder."""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np

from cnnzip.errors import CnnzipError
from cnnzip.export.c.ctext import Emitted
from cnnzip.export.c.forms.base import Form
from cnnzip.export.c.geometry import Geometry


def _discover() -> dict[str, Form]:
    # the modules of this package folder only (what cnnzip ships), never a name a file gives
    found: list[Form] = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += getattr(module, "FORMS", ())
    return {form.name: form for form in sorted(found, key=lambda f: f.order)}


REGISTRY: dict[str, Form] = _discover()
FORMS: tuple[str, ...] = tuple(REGISTRY)


def emit(layer, name: str, geo: Geometry, form: str) -> Emitted:
    """The C of ``layer`` (an IntLayer, Logits or FloatLayer) on ``geo``, computed by ``form``.

    Raises:
        CnnzipError: a form the layer cannot take (float layers are dense only; weights wider
            than 8 bits; a zero point whose folding could overflow).
    """
    is_float = layer.weight.dtype.kind == "f"
    if not is_float and np.abs(layer.weight).max(initial=0) > 127:
        raise CnnzipError(f"{name}: weights wider than 8 bits have no C kernel")
    if form != "dense" and is_float:
        raise CnnzipError(f"{name}: float layers have only the dense form")
    return REGISTRY[form].emit(layer, name, geo)
