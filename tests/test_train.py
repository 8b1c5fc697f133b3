import torch

from cnnzip.data import synthetic_splits
from cnnzip.train import TrainConfig, distillation_loss, evaluate, fit
from tests.helpers import tiny


def test_fit_learns_the_synthetic_task():
    splits = synthetic_splits()
    model = tiny("mlp")
    before = evaluate(model, splits.test, splits.info)
    result = fit(model, splits, TrainConfig(epochs=3, augment_pad=0, lr=0.05), quiet=True)
    after = evaluate(model, splits.test, splits.info)
    assert before < 0.3 and after > 0.9
    assert len(result.val_accuracy) == 3 and result.train_loss[-1] < result.train_loss[0]


def test_fit_is_deterministic():
    splits = synthetic_splits()
    a, b = tiny("convbn"), tiny("convbn")
    for m in (a, b):
        fit(m, splits, TrainConfig(epochs=1, seed=7), quiet=True)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_zero_epochs_changes_nothing():
    splits = synthetic_splits()
    model = tiny("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, splits, TrainConfig(epochs=0), quiet=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_distillation_loss():
    logits = torch.randn(6, 10)
    labels = torch.randint(0, 10, (6,))
    ce = torch.nn.functional.cross_entropy(logits, labels)
    # identical teacher: the KL term vanishes and only (1 - alpha) · CE remains
    got = distillation_loss(logits, logits, labels, temperature=4.0, alpha=0.7)
    assert torch.allclose(got, 0.3 * ce, atol=1e-6)
    other = distillation_loss(logits, torch.randn(6, 10), labels, temperature=4.0, alpha=0.7)
    assert other > got


def test_distillation_pulls_student_to_teacher_and_after_step_runs():
    splits = synthetic_splits()
    teacher = tiny("mlp", seed=1)
    fit(teacher, splits, TrainConfig(epochs=4, augment_pad=0), quiet=True)
    student = tiny("mlp", seed=2)
    calls = []
    fit(student, splits, TrainConfig(epochs=4, augment_pad=0), teacher=teacher, quiet=True,
        after_step=lambda m: calls.append(1))
    assert len(calls) == 4 * 4  # 512 samples / 128 per step, four epochs
    x = (splits.test.images.float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        agreement = (student(x).argmax(1) == teacher(x).argmax(1)).float().mean()
    assert agreement > 0.9
