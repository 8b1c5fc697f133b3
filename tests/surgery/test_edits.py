"""The ordered edit record: JSON round trip, older records, every field checked, replay order."""

import json

import pytest
import torch

from cnnzip.errors import ModelError
from cnnzip.surgery import (ChannelsRemoved, LayerQuantized, ModelSpec, ModuleReplaced,
                            WeightsShared, build_model)
from cnnzip.surgery.edits import from_json, to_json

EDITS = (ChannelsRemoved((("features.0", (0, 2)), ("features.3", (1,)))),
         ModuleReplaced("features.2", {"type": "Identity"}),
         LayerQuantized("classifier.0", 8, 8, True, 0),
         LayerQuantized("classifier.2", 4, 8, False, 0),
         WeightsShared("classifier.4", 16, 1, 300))


def test_a_spec_and_its_edits_survive_json():
    spec = ModelSpec("lenet5", (1, 28, 28), 10, edits=EDITS)
    record = json.loads(json.dumps(spec.to_dict()))
    assert ModelSpec.from_dict(record) == spec
    # runs of one kind share a group: ["layer_quantized", [...], [...]]
    assert [group[0] for group in record["edits"]] == [
        "channels_removed", "module_replaced", "layer_quantized", "weights_shared"]
    assert from_json(to_json(EDITS)) == EDITS


def test_an_older_record_becomes_edits_in_its_fixed_replay_order():
    record = {"name": "lenet5", "in_shape": [1, 28, 28], "num_classes": 10,
              "channel_plan": [["features.0", True, [0, 2]]], "folded": [],
              "replaced": [["features.2", {"type": "Identity"}]],
              "quantized": [["classifier.0", 8, 8, True, 0]]}
    spec = ModelSpec.from_dict(record)
    assert spec.edits == (ChannelsRemoved((("features.0", (0, 2)),)),
                          ModuleReplaced("features.2", {"type": "Identity"}),
                          LayerQuantized("classifier.0", 8, 8, True, 0))
    with pytest.raises(ModelError, match="either edits or the older lists"):
        ModelSpec.from_dict({**record, "edits": to_json(EDITS)})


@pytest.mark.parametrize("edits,message", [
    ([["norm_folded", ["a"]]], r"edit group 1 \(norm_folded\), edit 1: field 1: Field required"),
    ([["layer_quantized", ["x", 99, 8, True, 0]]], "less than or equal to 16"),
    ([["channels_removed", [[["a", []]]]]], "at least 1 item"),
    ([["rm_rf", ["/"]]], "op one of channels_removed"),
    ([["norm_folded", ["a", "b"], ["c", "d", "e"]]], "edit 2"),
    ([["module_replaced", ["../x", {}]]], "pattern"),
])
def test_every_field_of_a_record_is_checked(edits, message):
    record = {"name": "lenet5", "in_shape": [1, 28, 28], "num_classes": 10, "edits": edits}
    with pytest.raises(ModelError, match=message):
        ModelSpec.from_dict(record)


def test_edits_replay_in_the_order_they_were_made():
    torch.manual_seed(0)
    spec = ModelSpec("lenet5", edits=EDITS[:4])
    model = build_model(spec)
    assert model.features[0].out_channels == 4 and model.features[3].in_channels == 4
    assert type(model.features[2]).__name__ == "Identity"
    assert model.classifier[2].weight_bits == 4 and not model.classifier[2].per_channel
    shared = build_model(ModelSpec("lenet5", edits=EDITS[4:]))
    assert shared.classifier[4].codebook.shape == (16, 1) and shared.classifier[4].nnz == 300
    # the same edits in an order they cannot have happened in: a clear error, naming the edit
    wrong = ModelSpec("lenet5", edits=(ModuleReplaced("features.0", {"type": "Identity"}),
                                       ChannelsRemoved((("features.0", (0,)),))))
    with pytest.raises(ModelError, match=r"edit 2 \(channels_removed\) does not fit"):
        build_model(wrong)


@pytest.mark.parametrize("edits", [[[["norm_folded"], ["a", "b"]]], [[None, ["a", "b"]]],
                                   [{"op": "norm_folded"}], [["norm_folded"]], "edits"])
def test_a_record_of_the_wrong_shape_is_a_clear_error(edits):
    record = {"name": "lenet5", "in_shape": [1, 28, 28], "num_classes": 10, "edits": edits}
    with pytest.raises(ModelError, match="malformed model spec"):
        ModelSpec.from_dict(record)
