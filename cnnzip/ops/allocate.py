"""A budget spread over layers from a scan of each layer alone: per layer, points (how much of it
is cut, the validation accuracy measured with that cut alone); the allocation takes the cuts
that lose the least accuracy per unit of cost saved. Used for unstructured sparsities (the
sensitivity scan) and for low-rank ranks."""

from __future__ import annotations


def choose_sparsities(table: dict[str, list[tuple[float, float]]], base: float,
                      tolerance: float, max_sparsity: float) -> dict[str, float]:
    """Each layer's largest scanned cut (a sparsity, or the fraction of its cost a factorization
    saves) whose accuracy drop stays within ``tolerance``."""
    return {name: max([s for s, acc in points if base - acc <= tolerance and s <= max_sparsity],
                      default=0.0)
            for name, points in table.items()}


def allocate_for_target(table: dict[str, list[tuple[float, float]]], base: float,
                        sizes: dict[str, int], target: float,
                        max_sparsity: float) -> dict[str, float]:
    """Per-layer cuts that remove ``target`` of the layers' total ``sizes`` (weights, MACs) at the
    least scanned cost; the last move stops part-way, at exactly the target.

    Greedy on marginal cost: every move raises one layer to its next scanned cut, and the move
    taken is the one that loses the least validation accuracy per unit of size removed. Drops
    are made monotone in sparsity first (the scan is noisy), so a move never looks free because
    of noise.
    """
    total = sum(sizes.values())
    drops: dict[str, list[tuple[float, float]]] = {}
    for name, points in table.items():
        worst, mono = 0.0, [(0.0, 0.0)]
        for s, acc in sorted(points):
            if s <= max_sparsity:
                worst = max(worst, base - acc)
                mono.append((s, worst))
        drops[name] = mono
    level = {name: 0 for name in table}
    pruned = 0.0
    while pruned < target * total - 1e-9:
        best, best_cost = None, float("inf")
        for name, curve in drops.items():
            i = level[name]
            if i + 1 >= len(curve):
                continue
            (s0, d0), (s1, d1) = curve[i], curve[i + 1]
            cost = (d1 - d0) / ((s1 - s0) * sizes[name])
            if cost < best_cost:
                best, best_cost = name, cost
        if best is None:
            break  # every layer is at its maximum
        (s0, _), (s1, _) = drops[best][level[best]], drops[best][level[best] + 1]
        needed = target * total - pruned
        if (s1 - s0) * sizes[best] > needed:  # the last move: only as far as the target needs
            chosen = {name: drops[name][level[name]][0] for name in table}
            chosen[best] = s0 + needed / sizes[best]
            return chosen
        pruned += (s1 - s0) * sizes[best]
        level[best] += 1
    return {name: drops[name][level[name]][0] for name in table}
