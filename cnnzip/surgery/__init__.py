"""The only code that changes a model: remove channels, fold BatchNorms, merge and replace
modules, wrap layers in quantized or codebook modules. Each change returns a typed edit
(:mod:`cnnzip.surgery.edits`) that the model's spec keeps in order, and :func:`build_model`
replays."""

from cnnzip.surgery.channels import remove_channels, silence_channels
from cnnzip.surgery.edits import (ChannelsRemoved, Edit, LayerQuantized, ModuleReplaced, NormFolded,
                                  WeightsShared)
from cnnzip.surgery.fold import fold_batchnorm, standardize_batchnorm
from cnnzip.surgery.replace import set_module
from cnnzip.surgery.spec import ModelSpec, SpecSchema, build_model, resolve_spec
from cnnzip.surgery.wrappers import (materialize, plain_layers, quantize_layer, quantized_edit,
                                     share_layer)

__all__ = ["ChannelsRemoved", "Edit", "LayerQuantized", "ModelSpec", "ModuleReplaced",
           "NormFolded", "SpecSchema", "WeightsShared", "build_model", "fold_batchnorm",
           "materialize", "plain_layers", "quantize_layer", "quantized_edit", "remove_channels",
           "resolve_spec", "set_module", "share_layer", "silence_channels",
           "standardize_batchnorm"]
