"""The integer reference of a quantized layer against cnnzip's fake-quantized layer."""

import numpy as np
import pytest
import torch

from cnnzip.data import batches, synthetic_splits
from cnnzip.export.ir.ops import LoweringError, lower
from cnnzip.methods import Context, apply
from cnnzip.methods.quant import Quantize
from cnnzip.ops.quant import quantize
from cnnzip.surgery import build_model, resolve_spec


def _quantized(**options):
    torch.manual_seed(0)
    spec = resolve_spec("lenet5", (1, 28, 28), 10)
    model = build_model(spec).eval()
    splits = synthetic_splits()
    apply(model, Quantize(calibration=256, **options), Context(splits, finetune_epochs=0,
                                                                 quiet=True))
    x, _ = next(iter(batches(splits.test, splits.info, 64)))
    return model.eval(), x


def _inputs(model, x):
    seen = {}

    def record(name):
        def hook(module, args, out):
            seen[name] = args[0]  # returns None: the output stays as it was
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules()
             if hasattr(m, "a_grid")]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("weight_bits", [8, 4, 2, 1])
@pytest.mark.parametrize("layer,relu,next_layer", [
    ("features.0", True, "features.3"),  # conv → ReLU → (max pool) → conv
    ("classifier.0", True, "classifier.2"),  # linear → ReLU → linear
])
def test_the_integer_layer_is_the_fake_quantized_one_within_one_step(weight_bits, layer, relu,
                                                                     next_layer):
    model, x = _quantized(weight_bits=weight_bits, act_bits=8)
    seen = _inputs(model, x)
    q, nxt = model.get_submodule(layer), model.get_submodule(next_layer)
    with torch.no_grad():
        codes_in = quantize(seen[layer], q.a_scale, q.a_zero, q.a_grid).numpy().astype(np.int64)
    int_layer = lower(q, float(nxt.a_scale.detach()), int(nxt.a_zero.item()), 8, relu=relu,
                      name=layer)
    got = int_layer(codes_in)
    with torch.no_grad():  # the float path: fake-quantized layer, ReLU, the next input's grid
        y = torch.relu(q(seen[layer]))
        expected = quantize(y, nxt.a_scale, nxt.a_zero, nxt.a_grid).numpy().astype(np.int64)
    if y.dim() == 4 and got.shape != expected.shape:
        pytest.fail(f"shapes {got.shape} and {expected.shape}")
    diff = np.abs(got - expected)
    # The float path rounds once; the integers round the accumulator to 2^-r of a step (r the
    # right shift), then to a step, halves away from zero (CMSIS-NN's default). Values within
    # 2^-(r+1) of a half can go one step the other way: at most that fraction differs.
    right = int(np.maximum(-int_layer.shift, 0).min())
    assert diff.max() <= 1, diff.max()
    assert (diff == 0).mean() >= 1 - 2.0 ** -(right + 1) - 0.005, ((diff == 0).mean(), right)
    assert got.min() >= int(nxt.a_zero.item())  # the fused ReLU


def test_float_inputs_are_refused_with_a_pointer_to_quantizing_them():
    model, _ = _quantized(act_bits=0)
    with pytest.raises(LoweringError, match="inputs are float"):
        lower(model.get_submodule("features.0"), 0.1, 0, 8, name="features.0")


@pytest.mark.parametrize("name", ["lenet5", "lenet300"])
def test_a_whole_quantized_model_in_integers_gives_the_fake_quantized_logits(name):
    from cnnzip.export.ir.lower import lower_model

    torch.manual_seed(0)
    spec = resolve_spec(name, (1, 28, 28), 10)
    model = build_model(spec).eval()
    splits = synthetic_splits()
    apply(model, Quantize(calibration=256), Context(splits, finetune_epochs=0, quiet=True))
    x, _ = next(iter(batches(splits.test, splits.info, 256)))
    int_model = lower_model(model, (1, 28, 28))
    logits = int_model(int_model.quantize_input(x))
    assert logits.dtype == np.int64 and logits.shape == (256, 10)
    with torch.no_grad():
        expected = model.eval()(x).double().numpy()
    got = logits * int_model.logit_scale
    spread = expected.max() - expected.min()
    # one step of the last hidden layer's grid moves a logit by a few of its scale's steps
    assert np.abs(got - expected).max() < 0.05 * spread
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95


@pytest.mark.parametrize("name", ["residual", "concat", "depthwise", "grouped", "convbn",
                                  "mlp", "resnet20", "mobilenetv2"])
def test_joins_pooling_and_grouped_layers_in_integers_give_the_fake_quantized_logits(name):
    """Residual adds (rescaled as TensorFlow Lite does), concatenations, global average pooling,
    depthwise and grouped convolutions: the integer graph agrees with the fake-quantized
    model."""
    from cnnzip.export.ir.ops import Add, Concat, GlobalAvgPool
    from cnnzip.export.ir.lower import lower_model
    from tests.helpers import tiny, zoo_model

    torch.manual_seed(0)
    model = zoo_model(name) if name in ("resnet20", "mobilenetv2") else tiny(name)
    splits = synthetic_splits()
    apply(model, Quantize(calibration=256), Context(splits, finetune_epochs=0, quiet=True))
    x, _ = next(iter(batches(splits.test, splits.info, 256)))
    calibration, _ = next(iter(batches(splits.train, splits.info, 256)))
    int_model = lower_model(model, (1, 28, 28), calibration)
    kinds = {type(node.op) for node in int_model.nodes}
    expect = {"residual": Add, "resnet20": Add, "mobilenetv2": Add, "concat": Concat,
              "depthwise": GlobalAvgPool}
    assert expect.get(name, object) in kinds or name not in expect
    got = int_model(int_model.quantize_input(x)) * int_model.logit_scale
    with torch.no_grad():
        expected = model.eval()(x).double().numpy()
    assert np.abs(got - expected).max() < 0.1 * (expected.max() - expected.min())
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9


def test_an_unlowered_operation_is_refused_by_name():
    from cnnzip.export.ir.lower import lower_model

    class Sigmoid(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(784, 10)

        def forward(self, x):
            return self.fc(torch.sigmoid(x.flatten(1)))

    model = Sigmoid().eval()
    apply(model, Quantize(calibration=64), Context(synthetic_splits(), finetune_epochs=0,
                                                   quiet=True))
    with pytest.raises(LoweringError, match="sigmoid.*not lowered to integers yet"):
        lower_model(model, (1, 28, 28))
