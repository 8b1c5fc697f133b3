import torch
from torch import nn

from cnnzip.metrics import count_macs, count_nonzero, count_params, layer_stats, throughput
from cnnzip.surgery import build_model, resolve_spec
from tests.helpers import tiny


def test_lenet5_macs_match_the_hand_count():
    # conv1 28·28·6·25 + conv2 10·10·16·6·25 + fc 400·120 + 120·84 + 84·10
    model = build_model(resolve_spec("lenet5", (1, 28, 28), 10))
    assert count_macs(model, (1, 28, 28)) == 117_600 + 240_000 + 48_000 + 10_080 + 840 == 416_520


def test_depthwise_and_grouped_macs():
    dw = tiny("depthwise")
    # pw: 28·28·8·1; dw (stride 2 → 14×14): 14·14·8·9; fc 8·10
    assert count_macs(dw, (1, 28, 28)) == 28 * 28 * 8 + 14 * 14 * 8 * 9 + 80
    grouped = tiny("grouped")
    # stem 28·28·8·9; grouped (8 in, 2 groups → 4 per output): 28·28·8·4·9; fc 80
    assert count_macs(grouped, (1, 28, 28)) == 28 * 28 * 8 * 9 + 28 * 28 * 8 * 4 * 9 + 80


def test_layer_stats_and_nonzeros():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[1].weight[0].zero_()
    stats = layer_stats(model, (1, 2, 2))
    assert [s.name for s in stats] == ["1", "3"]
    assert stats[0].params == 15 and stats[0].nonzero == 11 and stats[0].macs == 12
    assert count_params(model) == 23 and count_nonzero(model) == 19


def test_throughput_is_positive_and_model_left_in_eval():
    model = tiny("mlp").train()
    modes = []
    model.register_forward_hook(lambda m, i, o: modes.append(m.training))
    assert throughput(model, (1, 28, 28), batch_size=8, min_seconds=0.01, min_runs=2) > 0
    assert len(modes) >= 4 and not any(modes)  # warm-up and timed passes all in eval mode
    assert not model.training
