"""Categories from the classifier's confusion matrix: merge the fine classes the model confuses.

The matrix comes from crops of products the classifier was not fitted on (cross-validation folds by
product), so it measures how well a class generalises to new products of that class, which is what a category
filter at search time needs. Greedy agglomeration: while merged accuracy is below ``target`` (or a
pair of groups is confused more than ``max_pair_confusion`` of the time), merge the two groups with
the highest mutual confusion rate.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np

FOLDS = 5


def fold_of(product_id: str) -> int:
    """Cross-validation fold of a product (by hash, stable)."""
    return int(hashlib.sha256(f"fold:{product_id}".encode()).hexdigest(), 16) % FOLDS


def confusion(true: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (true, pred), 1)
    return m


def _name(members: list[str], taken: set[str]) -> str:
    """Common leading tokens of the member names (``animals-birds`` + ``animals-fish`` -> ``animals``),
    else the members joined by ``+``."""
    if len(members) == 1:
        return members[0]
    tokens = [re.split(r"[-_]", m) for m in members]
    common = []
    for parts in zip(*tokens):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    if common:
        name = "-".join(common)
    else:  # the leading tokens of the members, most frequent first: "animals+food+plants+3"
        heads: dict[str, int] = {}
        for t in tokens:
            heads[t[0]] = heads.get(t[0], 0) + 1
        top = sorted(heads, key=lambda h: (-heads[h], h))
        name = "+".join(top[:3]) + (f"+{len(top) - 3}" if len(top) > 3 else "")
    base, i = name, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


def merge_by_confusion(classes: list[str], conf: np.ndarray, *, target: float = 0.97,
                       max_pair_confusion: float = 0.25) -> tuple[dict[str, str], list[dict]]:
    """Returns (fine class -> category, the merge steps with the accuracy after each)."""
    groups: list[list[int]] = [[i] for i in range(len(classes))]
    steps: list[dict] = []

    def grouped() -> np.ndarray:
        a = np.zeros((len(classes), len(groups)))
        for g, members in enumerate(groups):
            a[members, g] = 1
        return a.T @ conf @ a

    while len(groups) > 1:
        g = grouped()
        total = g.sum()
        acc = float(np.trace(g) / total) if total else 1.0
        support = g.sum(1) + g.sum(0)
        rate = (g + g.T) / np.maximum(support[:, None] + support[None, :], 1)
        np.fill_diagonal(rate, -1)
        a, b = np.unravel_index(int(np.argmax(rate)), rate.shape)
        if acc >= target and rate[a, b] < max_pair_confusion:
            break
        if rate[a, b] <= 0:
            break
        a, b = sorted((int(a), int(b)))
        merged = groups[a] + groups[b]
        steps.append({"merged": [[classes[i] for i in groups[a]], [classes[i] for i in groups[b]]],
                      "pair_confusion": round(float(rate[a, b]), 3), "accuracy_before": round(acc, 4)})
        groups = [m for i, m in enumerate(groups) if i not in (a, b)] + [merged]
    g = grouped()
    steps.append({"final_accuracy": round(float(np.trace(g) / max(g.sum(), 1)), 4), "categories": len(groups)})
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    for members in sorted(groups, key=lambda m: (len(m) > 1, sorted(classes[i] for i in m))):
        name = _name([classes[i] for i in members], taken)
        taken.add(name)
        for i in members:
            mapping[classes[i]] = name
    return mapping, steps
