import torch
from torch import nn

from cnnzip.data import synthetic_splits
from cnnzip.methods.base import Context, apply
from cnnzip.methods.prune import MagnitudePrune, Schedule
from cnnzip.methods.share import Sharing, WeightSharing
from cnnzip.metrics import count_macs, count_nonzero, count_params
from cnnzip.modules import CodebookLayer, weight_layers
from cnnzip.train import TrainConfig, fit
from tests.helpers import tiny


def test_codebook_layer_matches_the_dense_layer():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    dense = nn.Conv2d(3, 4, 3, padding=1)
    dense.load_state_dict(conv.state_dict())
    positions = torch.tensor([0, 5, 17, 100])
    book = torch.tensor([[0.5], [-1.0]])
    codes = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        dense.weight.zero_()
        dense.weight.view(-1)[positions] = book[codes, 0]
    layer = CodebookLayer(conv, positions, book, codes)
    x = torch.randn(2, 3, 5, 5)
    assert torch.allclose(layer(x), dense(x))
    assert "k=2, d=1" in repr(layer)


def test_a_grid_codebook_computes_with_its_rounded_centroids_and_trains_straight_through():
    from cnnzip.ops.quant import round_pow2

    torch.manual_seed(0)
    book = torch.tensor([[0.3], [-0.7], [0.11]])
    positions, codes = torch.tensor([0, 5, 17, 100]), torch.tensor([0, 1, 2, 0])
    layer = CodebookLayer(nn.Conv2d(3, 4, 3, padding=1), positions, book, codes)
    rounded = CodebookLayer(nn.Conv2d(3, 4, 3, padding=1), positions, round_pow2(book, 3),
                            codes)
    rounded.layer.bias = layer.layer.bias
    layer.grid_bits = 3
    x = torch.randn(2, 3, 5, 5)
    out = layer(x)
    assert torch.equal(out, rounded(x)) and not torch.equal(round_pow2(book, 3), book)
    out.square().sum().backward()
    rounded(x).square().sum().backward()
    # the gradient at the rounded centroids reaches the float ones unchanged
    assert torch.allclose(layer.codebook.grad, rounded.codebook.grad)
    assert layer.codebook.grad.abs().min() > 0


def test_metrics_see_the_dense_geometry():
    model = tiny("convbn")
    params, macs = count_params(model), count_macs(model, (1, 28, 28))
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, MagnitudePrune(sparsity=0.5, schedule=Schedule.ONE_SHOT), ctx)
    nonzero = count_nonzero(model)
    apply(model, WeightSharing(conv_bits=4, fc_bits=4), ctx)
    assert count_params(model) == params and count_macs(model, (1, 28, 28)) == macs
    assert count_nonzero(model) == nonzero


def test_masks_survive_finetuning():
    splits = synthetic_splits()
    model = tiny("mlp")
    ctx = Context(splits, teacher=tiny("mlp", seed=5), quiet=True)
    apply(model, MagnitudePrune(sparsity=0.8, schedule=Schedule.AGP, epochs=2, rounds=3), ctx)
    for name, layer in weight_layers(model).items():
        assert torch.equal(layer.weight != 0, ctx.masks[name])
        assert abs((layer.weight == 0).float().mean() - 0.8) < 0.01


def test_centroid_finetuning_keeps_the_number_of_distinct_values():
    splits = synthetic_splits()
    model = tiny("mlp")
    ctx = Context(splits, finetune_epochs=0, quiet=True)
    apply(model, MagnitudePrune(sparsity=0.5, schedule=Schedule.ONE_SHOT), ctx)
    apply(model, WeightSharing(fc_bits=3), ctx)
    before = {n: l.codebook.detach().clone() for n, l in weight_layers(model).items()}
    fit(model, splits, TrainConfig(epochs=1, lr=0.01), quiet=True)
    for name, layer in weight_layers(model).items():
        w = layer.weight.detach()
        assert len(torch.unique(w[w != 0])) <= 8
        assert not torch.equal(layer.codebook, before[name])  # the centroids did move


def test_product_quantization_blocks():
    model = tiny("mlp")
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, WeightSharing(method=Sharing.PQ, block=4, fc_bits=6), ctx)
    layer = weight_layers(model)["net.1"]
    assert layer.codebook.shape == (64, 4) and layer.codes.numel() == 784 * 16 // 4
    assert layer.bits == 1.5


def test_materialize_computes_the_same():
    from cnnzip.surgery import materialize

    model = tiny("convbn")
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, WeightSharing(conv_bits=3, fc_bits=3), ctx)
    x = torch.randn(3, 1, 28, 28)
    expected = model(x)
    materialize(model)
    assert not any(isinstance(m, CodebookLayer) for m in model.modules())
    assert torch.equal(model(x), expected)


def test_clustered_weight_computes_with_centroids_and_trains_both_ways():
    from torch.nn.utils import parametrize

    from cnnzip.modules.codebook import ClusteredWeight

    layer = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.9, 0.0, -1.1, 0.2],
                                         [1.2, -0.8, 0.0, 0.1],
                                         [0.0, 0.0, 0.0, -0.1]]))
    positions = torch.nonzero(layer.weight.detach().flatten(), as_tuple=True)[0]
    book = torch.tensor([[-1.0], [0.0], [1.0]])
    quantizer = ClusteredWeight(positions, book, torch.zeros(len(positions), dtype=torch.long))
    parametrize.register_parametrization(layer, "weight", quantizer)
    expected = torch.tensor([[1.0, 0.0, -1.0, 0.0], [1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(layer.weight, expected)  # nearest centroids; pruned entries stay zero
    assert quantizer.codes.tolist() == [2, 0, 1, 2, 0, 1, 1]
    grad = torch.arange(12.0).view(3, 4)
    (layer.weight * grad).sum().backward()
    latent = layer.parametrizations.weight.original
    mask = torch.zeros(12)
    mask[positions] = 1
    assert torch.equal(latent.grad, grad * mask.view(3, 4))  # straight through, survivors only
    # a centroid's gradient: the mean of its weights' (2 and 5 for -1; 3, 7, 11 for 0; 0, 4)
    assert quantizer.codebook.grad[:, 0].tolist() == [3.5, 7.0, 2.0]
    with torch.no_grad():  # a weight that trains past the midpoint changes cluster
        latent[0, 3] = 0.6
    layer.weight
    assert quantizer.codes.tolist() == [2, 0, 2, 2, 0, 1, 1]


def test_clustered_weight_rates_empty_rare_codes():
    from cnnzip.modules.codebook import ClusteredWeight

    weight = torch.cat([torch.full((90,), 0.1), torch.full((10,), 0.4)])
    book, codes = torch.tensor([[0.0], [0.5]]), (weight > 0.25).long()
    free = ClusteredWeight(torch.arange(100), book, codes, lam=0.0)
    priced = ClusteredWeight(torch.arange(100), book, codes, lam=0.01)
    assert priced.rate[1] > priced.rate[0] > 0 and free.rate.abs().sum() == 0
    assert torch.equal(free(weight), torch.where(weight > 0.25, 0.5, 0.0))
    # 0.4's error at 0.0 is 0.16, at 0.5 0.01 plus 0.01 × log2(10) ≈ 0.033 more than the code
    # 0 costs: it stays; at lam 0.1 the rare code costs more than the error it saves
    assert priced(weight).max() == 0.5
    expensive = ClusteredWeight(torch.arange(100), book, codes, lam=0.1)
    assert expensive(weight).max() == 0.0 and expensive.codes.sum() == 0
    expensive.update_rates()
    assert expensive.rate[1] == 0.1 * 64  # unused: it does not come back
