"""Per-group pruning ratios searched by a DDPG agent (:mod:`cnnzip.methods.shared.ddpg`) under
a MACs or parameter budget, rewarded by the validation accuracy of the pruned model before any
retraining (the chosen channels silenced, which is exact).

Two action spaces:

* ``ddpg`` (AMC, He et al. 2018): the agent walks the groups in execution order; its state is
  the group's layer (index, channels in and out, kernel, stride, output size, MACs), the
  fraction of the budget already cut and still to come, and its previous action; its action is
  the group's pruning ratio, raised where needed so that the budget stays reachable with every
  later group at ``max_ratio``.
* ``ddpg-scale`` (the seeds' variant): the agent sets each group's deviation, within
  ``±deviation``, from one global ratio; the global ratio is then solved: the least that, with
  the deviations, meets the budget. The agent learns the shape, the budget fixes the scale.

Costs during the search come from a closed form (each layer's MACs or parameters scale with
the fractions of its input and output channels kept); the allocation then meets the budget as
measured on the really pruned model (:func:`cnnzip.methods.shared.allocation.plan_removals`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnzip import metrics
from cnnzip.errors import CnnzipError
from cnnzip.graph import ChannelGroup, Role
from cnnzip.data import ImageSet, batches
from cnnzip.methods.base import Context
from cnnzip.methods.shared.calibration import calibration_images
from cnnzip.methods.shared.ddpg import DDPG
from cnnzip.progress import progress_bar
from cnnzip.surgery import silence_channels
from cnnzip.train import TrainConfig, distillation_loss


@dataclass(frozen=True)
class Policy:
    """A step's ``policy:`` option group: how a DDPG search runs (the fields the searched
    steps share; each step's group adds its own).

    Attributes:
        episodes: episodes of the search.
        warmup: of those, the first that act at random to fill the agent's memory.
    """

    episodes: int = 300
    warmup: int = 100

    def __post_init__(self) -> None:
        if not 0 <= self.warmup < self.episodes:
            raise CnnzipError(f"policy.warmup ({self.warmup}) must be fewer than "
                              f"policy.episodes ({self.episodes})")


@dataclass(frozen=True)
class ChannelPolicy(Policy):
    """The ``channels`` step's ``policy:`` option group (allocation ``ddpg``, ``ddpg-scale``).

    Attributes:
        episodes: episodes of the search (each one pruned model scored on ``samples``
            validation images, before retraining).
        warmup: of those, the first episodes that act at random to fill the agent's memory.
        samples: validation images per episode.
        bn_images: before each episode's score, the pruned model's BatchNorm statistics are
            measured again on this many training images (EagleEye's adaptive BatchNorm:
            without it a model cut to half its MACs scores near chance, whatever the ratios);
            0 scores it as pruned.
        finetune_images: before each episode's score, a short fine-tune with distillation
            (SGD at the step's ``lr``, batches of 128) on this many training images, the
            pruned channels held at zero (0: none; the score is then the pruned model's).
        deviation: ddpg-scale: how far a group's ratio may move from the global one.
    """

    samples: int = 1000
    bn_images: int = 512
    finetune_images: int = 0
    deviation: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples < 1 or not 0 < self.deviation <= 1:
            raise CnnzipError("policy.samples must be positive and policy.deviation in (0, 1]; "
                              f"got {self.samples}, {self.deviation}")
        if self.bn_images < 0 or self.finetune_images < 0:
            raise CnnzipError("policy.bn_images and policy.finetune_images are counts of "
                              f"training images, got {self.bn_images}, {self.finetune_images}")


@dataclass(frozen=True)
class PolicySearch:
    """One search: ``variant`` ddpg or ddpg-scale, ``episodes`` in all of which the first
    ``warmup`` act at random, each rewarded on ``samples`` validation images after the
    BatchNorms' statistics are measured again on ``bn_images`` training images (0: not) and
    after a short fine-tune with distillation on ``finetune_images`` training images at
    ``lr`` (0: none)."""

    variant: str
    episodes: int
    warmup: int
    samples: int
    bn_images: int
    deviation: float
    seed: int
    finetune_images: int = 0
    lr: float = 0.01


def _width(module: nn.Module, out: bool) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features if out else module.in_features
    return module.out_channels if out else module.in_channels


class CostModel:
    """The model's MACs (or parameters) as a function of each group's pruning ratio: a layer
    costs its dense cost times the fraction of its output channels kept times that of its
    input channels (a depthwise convolution: of its channels, once)."""

    def __init__(self, model: nn.Module, groups: list[ChannelGroup],
                 in_shape: tuple[int, ...], kind: str) -> None:
        stats = metrics.layer_stats(model, in_shape)
        index = {s.name: i for i, s in enumerate(stats)}
        self.base = np.array([s.params if kind == "params" else s.macs for s in stats], float)
        self.out = np.zeros((len(stats), len(groups)))
        self.inp = np.zeros((len(stats), len(groups)))
        modules = dict(model.named_modules())
        for g, group in enumerate(groups):
            for member in group.members:
                if member.role is Role.NORM or member.name not in index:
                    continue
                module = modules[member.name]
                out = member.role is Role.OUT
                if not out and isinstance(module, nn.Conv2d) and module.groups > 1:
                    continue  # a grouped layer's inputs go with its outputs
                table = self.out if out else self.inp
                table[index[member.name], g] += len(member.idxs) / _width(module, out)
        self.total = float(self.base.sum())
        # what each group's channels cost: the cost it removes when it goes whole
        self.share = self.base @ (self.out + self.inp)

    def cost(self, ratios: np.ndarray) -> float:
        keep_out = np.clip(1 - self.out @ ratios, 0, 1)
        keep_in = np.clip(1 - self.inp @ ratios, 0, 1)
        return float(self.base @ (keep_out * keep_in))


def static_features(model: nn.Module, names: list[str], in_shape: tuple[int, ...],
                    share: np.ndarray) -> np.ndarray:
    """Per decision, AMC's description of its layer ``names[t]``: index, output and input
    channels, kernel, stride, output positions, and ``share[t]`` (what the decision weighs in
    the budget); each column scaled to [0, 1] over the decisions."""
    modules = dict(model.named_modules())
    stats = {s.name: s for s in metrics.layer_stats(model, in_shape)}
    rows = []
    for t, name in enumerate(names):
        weights = modules[name].weight.numel()
        layer = getattr(modules[name], "layer", modules[name])  # a wrapper's conv or linear
        kernel = layer.kernel_size[0] if isinstance(layer, nn.Conv2d) else 1
        stride = layer.stride[0] if isinstance(layer, nn.Conv2d) else 1
        stat = stats.get(name)
        positions = stat.macs / max(1, weights) if stat else 1.0
        rows.append([t, _width(layer, True), _width(layer, False), kernel, stride, positions,
                     share[t]])
    table = np.array(rows, float)
    span = table.max(0) - table.min(0)
    return (table - table.min(0)) / np.where(span > 0, span, 1)


def recalibrate_batchnorm(model: nn.Module, images: ImageSet, info) -> None:
    """Measure every BatchNorm's running statistics again, as plain averages over ``images``
    (the pruned model's own feature maps; EagleEye's adaptive BatchNorm). Weights untouched."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            for x, _ in batches(images, info, 256):
                model(x)
    finally:
        model.train(was_training)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def _short_finetune(model: nn.Module, ctx: Context, search: PolicySearch):
    """A function that trains ``model`` briefly (SGD with momentum at ``search.lr``, batches of
    128 of ``search.finetune_images`` fixed training images, distilled from the teacher's
    logits, computed once), calling ``keep()`` after every step to hold the pruned channels at
    zero; None when the search has no fine-tune."""
    if not search.finetune_images:
        return None
    images = calibration_images(ctx, search.finetune_images)
    data = list(batches(images, ctx.splits.info, 128))
    teacher, defaults = ctx.teacher, TrainConfig()
    if teacher is not None:
        with torch.no_grad():
            targets = [teacher.eval()(x) for x, _ in data]

    def tune(keep) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=search.lr, momentum=0.9)
        model.train()
        for i, (x, y) in enumerate(data):
            out = model(x)
            loss = F.cross_entropy(out, y) if teacher is None else distillation_loss(
                out, targets[i], y, temperature=defaults.temperature, alpha=defaults.alpha)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                keep()
        model.eval()
    return tune


def _solve(cost, budget: float, lo: float, hi: float) -> float:
    """The least x in [lo, hi] with cost(x) ≤ budget (cost non-increasing in x); hi when none."""
    if cost(lo) <= budget:
        return lo
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost(mid) <= budget:
            hi = mid
        else:
            lo = mid
    return hi


class Episode:
    """Turns the agent's actions into one decision per step for one episode: decisions ``x``
    in [0, ``hi``], ``cost(x)`` non-increasing in each, within ``budget`` at the end."""

    def __init__(self, variant: str, deviation: float, hi: float, cost, budget: float,
                 static: np.ndarray, share: np.ndarray, uniform: float | None = None) -> None:
        self.variant, self.deviation, self.hi = variant, deviation, hi
        self.cost, self.budget, self.static, self.share = cost, budget, static, share
        n = len(static)
        self.full = cost(np.zeros(n))
        # the one value for every step that meets the budget (the same for every episode)
        self.uniform = uniform if uniform is not None else \
            _solve(lambda v: cost(np.full(n, v)), budget, 0.0, hi)
        self.x = np.zeros(n)
        self.actions = np.zeros(n)

    def state(self, t: int) -> np.ndarray:
        """The static description of step ``t``, the fraction of the budget's cost cut so far,
        the share still to come, and the previous action (zeros past the last step)."""
        n = len(self.static)
        if t >= n:
            return np.concatenate([np.zeros(self.static.shape[1]), [0.0, 0.0, self.actions[-1]]])
        so_far = self.x.copy()
        so_far[t:] = 0.0
        cut = (self.full - self.cost(so_far)) / self.full
        rest = self.share[t + 1:].sum() / max(self.share.sum(), 1e-12)
        previous = self.actions[t - 1] if t else 0.0
        return np.concatenate([self.static[t], [cut, rest, previous]])

    def act(self, t: int, action: float) -> float:
        """Set step ``t`` from ``action`` in [0, 1]; returns the action as taken (ddpg: raised
        so that the budget stays reachable with every later step at ``hi``)."""
        if self.variant == "ddpg":
            def cost(v: float) -> float:
                trial = self.x.copy()
                trial[t] = v
                trial[t + 1:] = self.hi
                return self.cost(trial)
            self.x[t] = max(action * self.hi, _solve(cost, self.budget, 0.0, self.hi))
            self.actions[t] = self.x[t] / self.hi
        else:
            self.actions[t] = action
            self.x[t] = np.clip(self.uniform + self._deviation(action), 0, self.hi)
        return float(self.actions[t])

    def _deviation(self, action: float) -> float:
        return (2 * action - 1) * self.deviation

    def finish(self) -> np.ndarray:
        """The episode's decisions: as set, scaled down to the budget where they cut more
        (ddpg), or the deviations about the one global value that meets the budget
        (ddpg-scale)."""
        if self.variant == "ddpg":  # cut no more than the budget asks
            x = self.x.copy()
            self.x = _solve(lambda f: self.cost(f * x), self.budget, 0.0, 1.0) * x
            return self.x.copy()
        shape = np.array([self._deviation(a) for a in self.actions])

        def at(scale: float) -> np.ndarray:
            return np.clip(scale + shape, 0, self.hi)
        self.x = at(_solve(lambda v: self.cost(at(v)), self.budget, -self.deviation,
                           self.hi + self.deviation))
        return self.x.copy()


def run_search(search: PolicySearch, label: str, static: np.ndarray, share: np.ndarray,
               hi: float, cost, budget: float, reward, quiet: bool
               ) -> tuple[np.ndarray, dict]:
    """Episodes of ``search``: the agent's decisions (``Episode``) scored by ``reward``; returns
    the best decisions found and notes for the report."""
    agent = DDPG(static.shape[1] + 3, len(static), search.seed)
    best, best_x, best_episode, rewards = -1.0, None, -1, []
    uniform = Episode(search.variant, search.deviation, hi, cost, budget, static, share).uniform
    with progress_bar(disable=quiet) as bar:
        task = bar.add_task(f"{label}: {search.variant}", total=search.episodes, status="")
        for episode in range(search.episodes):
            env = Episode(search.variant, search.deviation, hi, cost, budget, static, share,
                          uniform)
            transitions = []
            for t in range(len(static)):
                state = env.state(t)
                action = agent.random_action() if episode < search.warmup \
                    else agent.act(state, episode - search.warmup)
                taken = env.act(t, action)
                transitions.append((state, taken, env.state(t + 1)))
            x = env.finish()
            score = reward(x)
            rewards.append(round(score, 4))
            if score > best:
                best, best_x, best_episode = score, x, episode
            agent.observe(transitions, score)
            if episode >= search.warmup:
                for _ in transitions:
                    agent.update()
            bar.update(task, advance=1, status=f"best {100 * best:.2f}% (episode {best_episode})")
    notes = {"variant": search.variant, "episodes": search.episodes, "warmup": search.warmup,
             "samples": search.samples, "best_val_accuracy": best, "best_episode": best_episode,
             "rewards": rewards}
    if search.variant == "ddpg-scale":
        notes["global_value"] = uniform
    return best_x, notes


def search_ratios(model: nn.Module, groups: list[ChannelGroup], scores: dict[str, torch.Tensor],
                  search: PolicySearch, kind: str, fraction: float, max_ratio: float,
                  ctx: Context) -> tuple[dict[str, float], dict]:
    """The best per-group ratios (root name → fraction of units removed) the agent found
    within ``fraction`` of the model's ``kind`` (macs or params), and notes for the report.

    Raises:
        CnnzipError: when no ratios up to ``max_ratio`` meet the budget.
    """
    in_shape = tuple(ctx.splits.info.in_shape)
    costs = CostModel(model, groups, in_shape, kind)
    budget = fraction * costs.total
    if costs.cost(np.full(len(groups), max_ratio)) > budget:
        raise CnnzipError(f"channels: cannot keep {kind} within {fraction:g} of the model's "
                          f"with at most max_ratio={max_ratio} of every group removed")
    static = static_features(model, [g.root for g in groups], in_shape, costs.share)
    orders = [torch.argsort(scores[g.root], stable=True).tolist() for g in groups]
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    bn_images = calibration_images(ctx, search.bn_images) if search.bn_images else None

    tune = _short_finetune(model, ctx, search)

    def reward(ratios: np.ndarray) -> float:
        silenced = []
        for group, order, r in zip(groups, orders, ratios):
            n = len(order)
            k = min(n - 1, int(round(r * n)))
            if k:
                silenced.append((group, group.channels_of(order[:k])))
        for group, idxs in silenced:
            silence_channels(group, idxs)
        if search.bn_images:
            recalibrate_batchnorm(model, bn_images, ctx.splits.info)
        if tune is not None:
            tune(lambda: [silence_channels(g, idxs) for g, idxs in silenced])
        accuracy = ctx.val_accuracy(model, search.samples)
        model.load_state_dict(saved)
        return accuracy

    unpruned = ctx.val_accuracy(model, search.samples)
    ratios, notes = run_search(search, "channels", static, costs.share, max_ratio,
                               costs.cost, budget, reward, ctx.quiet)
    chosen = {g.root: float(r) for g, r in zip(groups, ratios)}
    notes.update(bn_images=search.bn_images, finetune_images=search.finetune_images,
                 unpruned_val_accuracy=unpruned,
                 modelled_fraction=costs.cost(ratios) / costs.total,
                 ratios={root: round(r, 4) for root, r in chosen.items()})
    return chosen, notes
