import pytest
import torch

from cnnzip.errors import ModelError
from cnnzip.models import ZOO
from cnnzip.surgery import ModelSpec, build_model, resolve_spec


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("in_shape", [(1, 28, 28), (3, 32, 32)])
def test_zoo_models_run_on_both_input_sizes(name, in_shape):
    torch.manual_seed(0)
    model = build_model(resolve_spec(name, in_shape, 10, 0.25 if ZOO[name].default_width else None))
    assert model.eval()(torch.randn(2, *in_shape)).shape == (2, 10)


@pytest.mark.parametrize("name,params", [("lenet300", 266_610), ("lenet5", 61_706),
                                         ("lenet5-caffe", 431_080)])
def test_lenet_parameter_counts(name, params):
    model = build_model(resolve_spec(name, (1, 28, 28), 10))
    assert sum(p.numel() for p in model.parameters()) == params


def test_default_width_and_fixed_width():
    assert resolve_spec("vgg16", (1, 28, 28), 10).width == ZOO["vgg16"].default_width
    with pytest.raises(ModelError, match="fixed width"):
        resolve_spec("lenet5", (1, 28, 28), 10, 0.5)


def test_user_factory_gets_the_arguments_it_accepts():
    model = build_model(ModelSpec("tests.helpers:ConvBN", (1, 8, 8), 3), trust_code=True)
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 3)


@pytest.mark.parametrize("target,message", [
    ("nonsense", "unknown model 'nonsense'"),
    ("no_such_module_xyz:f", "cannot import"),
    ("tests.helpers:missing", "no callable 'missing'"),
    ("tests.helpers:write_idx", "failed"),
    ("./mynet.py:tinynet", "not a file path: from the folder that holds it, --model mynet:"),
    ("mynet.py:tinynet", "--model mynet:tinynet"),
])
def test_bad_user_models(target, message):
    with pytest.raises(ModelError, match=message):
        build_model(ModelSpec(target), trust_code=True)


def test_spec_round_trip():
    spec = ModelSpec("resnet20", (3, 32, 32), 10, 0.5)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
