
import pytest
import torch
from torch import nn

from cnnzip.codec import load_checkpoint, save_checkpoint
from cnnzip.data import synthetic_splits
from cnnzip.errors import CnnzipError, ModelError
from cnnzip.graph import foldable_pairs
from cnnzip.methods.base import Context, apply
from cnnzip.methods.merge import FoldBatchNorm
from cnnzip.methods.share import WeightSharing
from cnnzip.surgery import (ModelSpec, NormFolded, build_model, fold_batchnorm, resolve_spec,
                            standardize_batchnorm)
from tests.helpers import tiny

IN = (1, 28, 28)


def _randomize_norms(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


def _norms(model):
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", ["vgg16", "resnet20", "mobilenetv2"])
def test_folding_every_batchnorm_of_the_zoo_is_exact(name):
    model = _randomize_norms(build_model(resolve_spec(name, IN, 10, width=0.25)))
    x = torch.randn(3, *IN)
    before = model(x)
    pairs = foldable_pairs(model)
    assert len(pairs) == _norms(model) > 0
    fold_batchnorm(model, pairs)
    assert _norms(model) == 0
    assert torch.allclose(model(x), before, atol=1e-5)


@pytest.mark.parametrize("name", ["convbn", "residual", "concat", "depthwise", "grouped"])
def test_folding_the_tiny_zoo_is_exact(name):
    model = _randomize_norms(tiny(name))
    x = torch.randn(3, *IN)
    before = model(x)
    fold_batchnorm(model, foldable_pairs(model))
    assert torch.allclose(model(x), before, atol=1e-5)


@pytest.mark.parametrize("name", ["vgg16", "resnet20", "mobilenetv2"])
def test_standardizing_every_batchnorm_keeps_the_function(name):
    model = _randomize_norms(build_model(resolve_spec(name, IN, 10, width=0.25)))
    x = torch.randn(3, *IN)
    before = model(x)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(standardize_batchnorm(m) for m in norms)
    for m in norms:
        assert not m.running_mean.any() and bool((m.running_var == 1).all())
    assert torch.allclose(model(x), before, atol=1e-5)


def test_a_batchnorm_without_scale_or_statistics_is_left_alone():
    for bn in (nn.BatchNorm2d(4, affine=False), nn.BatchNorm2d(4, track_running_stats=False)):
        state = {k: v.clone() for k, v in bn.state_dict().items()}
        assert not standardize_batchnorm(bn)
        assert all(torch.equal(v, bn.state_dict()[k]) for k, v in state.items())


class NormAfterAdd(nn.Module):
    """A BatchNorm that reads a sum, and one whose conv output is also read elsewhere."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)
        self.bn_sum, self.bn_shared = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 28 * 28, 10)

    def forward(self, x):
        a = self.a(x)
        y = self.bn_sum(a + self.b(x)) + self.bn_shared(a)
        return self.fc(y.flatten(1))


def test_only_exact_folds_are_found_and_a_wrong_pair_is_a_clear_error():
    model = NormAfterAdd()
    assert foldable_pairs(model) == []
    with pytest.raises(ModelError, match="cannot fold 'fc'"):
        fold_batchnorm(model, [("a", "fc")])
    with pytest.raises(ModelError, match="edit 1 .norm_folded. does not fit"):
        build_model(ModelSpec("lenet5", edits=(NormFolded("features.0", "nope"),)))


def test_fold_step_records_the_pairs_and_the_model_reloads(tmp_path):
    spec = resolve_spec("resnet20", IN, 10, width=0.25)
    model = _randomize_norms(build_model(spec))
    ctx = Context(synthetic_splits(), quiet=True)
    apply(model, FoldBatchNorm(), ctx)
    assert len(ctx.edits) == 21
    spec = spec.with_edits(ctx.edits)
    path = save_checkpoint(tmp_path / "f.safetensors", model, spec)
    loaded = load_checkpoint(path).model.eval()
    x = torch.randn(2, *IN)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_folding_after_weight_sharing_is_refused():
    model = tiny("convbn")
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    model = apply(model, WeightSharing(epochs=0), ctx)
    with pytest.raises(CnnzipError, match="before weight sharing"):
        apply(model, FoldBatchNorm(), ctx)
