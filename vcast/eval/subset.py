"""Stratified, seeded subsets: every task and duration class in proportion, not the first N items.

The same items, seed and N give the same subset whatever the order of the manifest: each stratum is
sorted by item id before it is sampled with its own seeded generator.
"""

from __future__ import annotations

import random
from collections import defaultdict

from .manifest import Item


def stratum(item: Item) -> tuple[str, str]:
    """(task, duration class): the cells a subset keeps in proportion."""
    return item.task, item.duration_class


def allocate(sizes: dict[tuple[str, str], int], n: int) -> dict[tuple[str, str], int]:
    """How many items each stratum contributes to a subset of n: one each first when n allows it,
    the rest in proportion to the items left, by largest remainder (ties to the earlier stratum)."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    keys = sorted(sizes)
    base = dict.fromkeys(keys, 1 if n >= len(keys) else 0)
    left = {k: sizes[k] - base[k] for k in keys}
    rest, pool = n - sum(base.values()), sum(left.values())
    quotas = {k: rest * left[k] / pool for k in keys} if pool else dict.fromkeys(keys, 0.0)
    counts = {k: base[k] + int(quotas[k]) for k in keys}
    by_remainder = sorted(keys, key=lambda k: (-(quotas[k] - int(quotas[k])), keys.index(k)))
    for k in by_remainder[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def stratified_subset(items: list[Item], n: int, seed: int = 0) -> list[Item]:
    """n items sampled per (task, duration class) stratum, in the manifest's order."""
    if n < 1:
        raise ValueError(f"--subset must be at least 1, got {n}")
    groups: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for item in items:
        groups[stratum(item)].append(item)
    counts = allocate({k: len(v) for k, v in groups.items()}, n)
    chosen: set[str] = set()
    for key, members in groups.items():
        rng = random.Random(f"{seed}|{key[0]}|{key[1]}")  # str seeds are hashed deterministically
        pool = sorted(members, key=lambda item: item.id)
        chosen.update(item.id for item in rng.sample(pool, counts[key]))
    return [item for item in items if item.id in chosen]
