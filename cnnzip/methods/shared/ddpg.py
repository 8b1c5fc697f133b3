"""Deep deterministic policy gradient (Lillicrap et al. 2016) as AMC (He et al. 2018) uses it
to choose one action per layer: an actor maps a layer's state to an action in [0, 1], a critic
scores (state, action) pairs; both learn from a replay memory of past episodes, with slowly
following target networks. Exploration adds truncated-normal noise whose width decays by a
factor per episode. Rewards are centred on their moving average before they are stored.

Everything random draws from the agent's own generators, so a seed fixes the whole search.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class AgentConfig:
    """AMC's published settings: 300-unit hidden layers, learning rates 1e-4 (actor) and 1e-3
    (critic), soft target updates 0.01, batches of 64, discount 1, exploration width 0.5
    decaying 0.95 per episode, and a replay memory of 100 transitions per layer."""

    hidden: int = 300
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01
    batch: int = 64
    discount: float = 1.0
    noise: float = 0.5
    noise_decay: float = 0.95
    memory_per_step: int = 100
    baseline_momentum: float = 0.95


def _mlp(inputs: int, hidden: int, out: nn.Module | None) -> nn.Sequential:
    layers = [nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
              nn.Linear(hidden, 1)]
    with torch.no_grad():  # a small last layer: actions and values start near the middle
        layers[-1].weight.uniform_(-3e-3, 3e-3)
        layers[-1].bias.zero_()
    return nn.Sequential(*layers, *([out] if out is not None else []))


class DDPG:
    """One-dimensional actions in [0, 1] for ``states``-dimensional states, ``steps`` actions
    per episode (which sizes the replay memory)."""

    def __init__(self, states: int, steps: int, seed: int,
                 config: AgentConfig = AgentConfig()) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = _mlp(states, config.hidden, nn.Sigmoid())
            self.critic = _mlp(states + 1, config.hidden, None)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.lr_actor)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.lr_critic)
        size = config.memory_per_step * steps
        self.memory = {"s": np.zeros((size, states), np.float32),
                       "a": np.zeros((size, 1), np.float32),
                       "r": np.zeros((size, 1), np.float32),
                       "s2": np.zeros((size, states), np.float32),
                       "done": np.zeros((size, 1), np.float32)}
        self.stored = 0
        self.baseline: float | None = None

    def random_action(self) -> float:
        return float(self.rng.uniform())

    def act(self, state: np.ndarray, episode: int) -> float:
        """The actor's action for ``state`` plus exploration noise of width
        ``noise · noise_decay ** episode``, truncated to [0, 1]."""
        with torch.no_grad():
            mean = float(self.actor(torch.as_tensor(state, dtype=torch.float32)[None]))
        width = self.config.noise * self.config.noise_decay ** episode
        return truncated_normal(self.rng, mean, width, 0.0, 1.0)

    def greedy(self, state: np.ndarray) -> float:
        with torch.no_grad():
            return float(self.actor(torch.as_tensor(state, dtype=torch.float32)[None]))

    def observe(self, episode: list[tuple[np.ndarray, float, np.ndarray]], reward: float) -> None:
        """Store an episode's transitions (state, action, next state), each rewarded with the
        episode's final ``reward`` less the moving-average baseline."""
        m = self.config.baseline_momentum
        self.baseline = reward if self.baseline is None else m * self.baseline + (1 - m) * reward
        centred = reward - self.baseline
        size = len(self.memory["s"])
        for i, (state, action, following) in enumerate(episode):
            slot = self.stored % size
            self.memory["s"][slot] = state
            self.memory["a"][slot] = action
            self.memory["r"][slot] = centred
            self.memory["s2"][slot] = following
            self.memory["done"][slot] = float(i == len(episode) - 1)
            self.stored += 1

    def update(self) -> None:
        """One gradient step of the critic (towards r + γ·Q'(s', μ'(s'))) and of the actor
        (along the critic's gradient), then the targets follow by ``tau``."""
        c = self.config
        filled = min(self.stored, len(self.memory["s"]))
        if filled < c.batch:
            return
        pick = self.rng.integers(0, filled, size=c.batch)
        s, a, r, s2, done = (torch.from_numpy(self.memory[k][pick])
                             for k in ("s", "a", "r", "s2", "done"))
        with torch.no_grad():
            follow = self.critic_target(torch.cat([s2, self.actor_target(s2)], 1))
            target = r + c.discount * (1 - done) * follow
        critic_loss = F.mse_loss(self.critic(torch.cat([s, a], 1)), target)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(torch.cat([s, self.actor(s)], 1)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        for net, target_net in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
            with torch.no_grad():
                for p, t in zip(net.parameters(), target_net.parameters()):
                    t.mul_(1 - c.tau).add_(p, alpha=c.tau)


def truncated_normal(rng: np.random.Generator, mean: float, width: float, lo: float,
                     hi: float) -> float:
    """A draw from the normal(``mean``, ``width``) restricted to [lo, hi] (by rejection; the
    mean itself, clipped, when the width is negligible)."""
    if width < 1e-6:
        return float(np.clip(mean, lo, hi))
    for _ in range(1000):
        x = rng.normal(mean, width)
        if lo <= x <= hi:
            return float(x)
    return float(np.clip(mean, lo, hi))
