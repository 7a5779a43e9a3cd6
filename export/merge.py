"""Categories from the classifier's confusion matrix: merge the fine classes the model confuses.

The matrix comes from crops of products the classifier was not fitted on (cross-validation folds by
product), so it measures how well a class generalises to new products of that class, which is what a
category filter at search time needs.

Average-linkage agglomeration on a symmetric confusion similarity: ``s[i, j]`` is the mean of the two
rates "a crop of i is predicted j" and "a crop of j is predicted i" (each row normalised by its class's
crops, so a large class does not dominate), and two groups are as similar as the mean ``s`` over their
member pairs. A group's similarity to the others does not grow as it absorbs classes, so one category
cannot snowball; on top of that no merge may make a category hold more than ``MAX_CATEGORY_SHARE`` of
the catalog. The most similar pair is merged while merged accuracy is below ``target`` or some pair is
more similar than ``max_pair_confusion``, and while a pair more similar than ``MIN_SIMILARITY`` may
still merge. When the cap stops the merge short of ``target``, the cap wins and the result says so.

Agglomeration only ever joins whole groups, so once the cap blocks every confused pair it is stuck, although
moving single classes between the groups may still keep more of the confusion inside them. Then
``rebalance`` searches for the partition with the most confusion inside its groups under the same cap:
local search (the best single-class move or two-class swap, until none gains) from the agglomeration's
groups and from ``REBALANCE_STARTS`` random balanced partitions into as few groups as the cap allows and
up to the agglomeration's count. The best partition on the probes' crops wins, the agglomeration's on a tie.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

FOLDS = 5
MAX_CATEGORY_SHARE = 0.40  # no category holds more than this share of the catalog (issue 9)
TARGET_ACCURACY = 0.95  # merged accuracy on unseen products at which merging may stop
MAX_PAIR_CONFUSION = 0.20  # ... unless two groups are still confused more than this (similarity s)
MIN_SIMILARITY = 0.005  # pairs confused less than this are not worth merging: nothing confusable remains
REBALANCE_STARTS = 64  # random partitions per group count that ``rebalance`` starts from (plus the agglomeration's)
REBALANCE_SEED = 0


def fold_of(product_id: str) -> int:
    """Cross-validation fold of a product (by hash, stable)."""
    return int(hashlib.sha256(f"fold:{product_id}".encode()).hexdigest(), 16) % FOLDS


def merged_accuracy(conf: np.ndarray, groups) -> float:
    """The share of the confusion matrix's crops that stay inside their group (1.0 for an empty matrix)."""
    total = float(conf.sum())
    return float(sum(conf[np.ix_(g, g)].sum() for g in groups) / total) if total else 1.0


def confusion(true: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (true, pred), 1)
    return m


def similarity(conf: np.ndarray) -> np.ndarray:
    """Symmetric confusion similarity of fine classes: the mean of the two row-normalised confusion
    rates (zero diagonal)."""
    conf = np.asarray(conf, float)
    rate = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    s = (rate + rate.T) / 2
    np.fill_diagonal(s, 0.0)
    return s


# --- names ----------------------------------------------------------------------------------------

def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[-_ ]", name) if t]


def _common_prefix(members: list[str]) -> str:
    common = []
    for parts in zip(*(_tokens(m) for m in members)):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return "-".join(common)


def _listing(members: list[str], size: dict[str, float], collapse: bool) -> str:
    """The two largest labels and how many member classes the name leaves out: ``animals, vehicles (+3)``.
    With ``collapse``, members that share a leading token and are not alone count as one label (the token)."""
    labels: dict[str, list[str]] = {}
    for m in members:
        head = _tokens(m)[0] if _tokens(m) else m
        labels.setdefault(head if collapse else m, []).append(m)
    if collapse:  # a head with one member keeps the member's own name
        labels = {(k if len(v) > 1 else v[0]): v for k, v in labels.items()}
    top = sorted(labels, key=lambda k: (-sum(size[m] for m in labels[k]), k))[:2]
    rest = len(members) - sum(len(labels[k]) for k in top)
    return ", ".join(top) + (f" (+{rest})" if rest else "")


def category_names(groups: list[list[str]], size: dict[str, float]) -> list[str]:
    """A readable, unique name per group of fine classes, after its members: the member itself; the common
    leading tokens of the members' names (``plants-flowers`` + ``plants-mushrooms`` -> ``plants``); else
    the two largest members (members sharing a leading token count as that token) and a count of the
    others (``animals, vehicles (+3)``). A name another group could claim too (a fine class of another
    group, or a shared prefix) falls back to listing the members, then to a number."""
    others_of = lambda g: {m for h in groups if h is not g for m in h}  # noqa: E731
    names: list[str] = []
    order = sorted(range(len(groups)), key=lambda i: (-sum(size[m] for m in groups[i]), sorted(groups[i])))
    out: dict[int, str] = {}
    for i in order:
        members = sorted(groups[i])
        if len(members) == 1:
            candidates = [members[0]]
        else:
            prefix = _common_prefix(members)
            others = others_of(groups[i])
            claimed = {_tokens(o)[0] for o in others if _tokens(o)} | others
            candidates = [prefix] if prefix and prefix not in claimed else []
            candidates += [c for c in (_listing(members, size, collapse=True), _listing(members, size, collapse=False))
                           if c != prefix]
        name = next((c for c in candidates if c not in names), None)
        k = 2
        while name is None or name in names:
            name, k = f"{candidates[0]} #{k}", k + 1
        names.append(name)
        out[i] = name
    return [out[i] for i in range(len(groups))]


# --- the merge --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CategoryMerge:
    """The outcome of ``merge_by_confusion``: ``mapping`` (fine class -> category) and what the log shows."""
    mapping: dict[str, str]
    steps: list[dict]  # each merge: the two groups, their similarity, accuracy and size after
    categories: dict[str, dict]  # name -> members, crops, share of the catalog, accuracy on the probes
    accuracy: float  # merged accuracy on the probes' crops
    fine_accuracy: float
    stop: str  # why merging stopped
    cap_limited: bool  # the size cap stopped the merge short of the accuracy target
    max_share: float
    target: float
    rebalanced: dict | None = None  # what ``rebalance`` changed after the agglomeration (None: it did not run)

    def log(self) -> dict:
        """For the training log (the mapping is logged as ``merge_map`` next to it)."""
        return {"merged_accuracy": self.accuracy, "categories": self.categories, "stop": self.stop,
                "cap_limited": self.cap_limited, "max_share": self.max_share, "target_accuracy": self.target,
                "steps": self.steps, "rebalanced": self.rebalanced}


def merge_by_confusion(classes: list[str], conf: np.ndarray, *, sizes: np.ndarray | None = None,
                       target: float = TARGET_ACCURACY, max_pair_confusion: float = MAX_PAIR_CONFUSION,
                       max_share: float = MAX_CATEGORY_SHARE, min_similarity: float = MIN_SIMILARITY) -> CategoryMerge:
    """Average-linkage merge of the fine ``classes`` by their confusion matrix ``conf`` (rows: true class,
    columns: predicted; counts). ``sizes``: each class's weight in the catalog for the size cap (e.g. its
    products; default: its crops, the row sums). Deterministic: ties go to the pair that comes first."""
    conf = np.asarray(conf)
    n = len(classes)
    if conf.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {conf.shape} for {n} classes")
    if len(set(classes)) != n:
        raise ValueError("class names must be unique")
    if not 0 < max_share <= 1:
        raise ValueError(f"max_share must be in (0, 1], got {max_share}")
    crops = conf.sum(1).astype(float)
    sizes = crops if sizes is None else np.asarray(sizes, float)
    if sizes.shape != (n,) or (sizes < 0).any() or not sizes.sum() > 0:
        raise ValueError(f"sizes must be {n} non-negative numbers, not all zero")
    cap = max_share * sizes.sum()
    s = similarity(conf)
    groups: list[list[int]] = [[i] for i in range(n)]

    def link(a: list[int], b: list[int]) -> float:
        return float(s[np.ix_(a, b)].mean())

    steps: list[dict] = []
    acc = merged_accuracy(conf, groups)
    stop, cap_limited = "one category left", False
    while len(groups) > 1:
        best, best_any = None, 0.0
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                v = link(groups[a], groups[b])
                best_any = max(best_any, v)
                if sizes[groups[a] + groups[b]].sum() <= cap + 1e-9 and (best is None or v > best[0]):
                    best = (v, a, b)
        if acc >= target and best_any <= max_pair_confusion:
            stop = f"merged accuracy {acc:.4f} >= {target} and no pair confused more than {max_pair_confusion}"
            break
        if best is None or best[0] < min_similarity:
            # best_any >= min_similarity here means a confused pair exists that the size cap blocks
            cap_limited = best_any >= min_similarity
            stop = (f"merged accuracy {acc:.4f}: the size cap ({max_share:.0%} of the catalog) blocks the remaining "
                    f"confused pairs (target {target})" if cap_limited else
                    f"merged accuracy {acc:.4f}: nothing confusable remains (no pair similarity >= {min_similarity})")
            break
        v, a, b = best
        ga, gb = groups[a], groups[b]
        groups = [g for i, g in enumerate(groups) if i not in (a, b)]
        groups.insert(a, ga + gb)
        acc = merged_accuracy(conf, groups)
        steps.append({"merged": [[classes[i] for i in ga], [classes[i] for i in gb]], "similarity": round(v, 4),
                      "accuracy_after": round(acc, 4), "share_after": round(float(sizes[ga + gb].sum() / sizes.sum()), 4)})
    rebalanced = None
    if cap_limited and acc < target:
        before = {"accuracy_before": round(acc, 4), "categories_before": len(groups)}
        groups, starts = rebalance(classes, conf, sizes, cap, groups)
        acc = merged_accuracy(conf, groups)
        rebalanced = before | {"accuracy_after": round(acc, 4), "categories_after": len(groups), "starts": starts}
        stop += f"; rebalanced under the cap: merged accuracy {acc:.4f}, {len(groups)} categories"
    names = category_names([[classes[i] for i in g] for g in groups], dict(zip(classes, sizes)))
    categories = {}
    for name, g in sorted(zip(names, groups), key=lambda x: -sizes[x[1]].sum()):
        row = float(crops[g].sum())
        categories[name] = {"members": sorted(classes[i] for i in g), "crops": int(row),
                            "share": round(float(sizes[g].sum() / sizes.sum()), 4),
                            "accuracy": round(float(conf[np.ix_(g, g)].sum() / row), 4) if row else None}
    mapping = {classes[i]: name for name, g in zip(names, groups) for i in g}
    return CategoryMerge(mapping, steps, categories, round(acc, 4), round(merged_accuracy(conf, [[i] for i in range(n)]), 4),
                         stop, cap_limited and acc < target, max_share, target, rebalanced)


def _local_search(w: np.ndarray, sizes: np.ndarray, cap: float, label: np.ndarray) -> np.ndarray:
    """Best-improvement local search on a partition (``label``: each class's group): move one class to another
    group or swap two classes of different groups, whichever keeps the most confusion ``w`` (symmetric, zero
    diagonal) inside the groups, while no group of several classes passes ``cap``; until nothing gains."""
    label = label.copy()
    k = int(label.max()) + 1
    while True:
        member = np.eye(k)[label]  # n x k one-hot
        link = w @ member  # link[i, g]: i's confusion with the classes of g (i itself excluded: zero diagonal)
        load = sizes @ member
        count = member.sum(0)
        own = link[np.arange(len(label)), label]
        # moves: i -> g
        gain = link - own[:, None]
        after = load[None, :] + sizes[:, None]
        fits = (after <= cap + 1e-9) | (count[None, :] == 0)
        gain[~fits] = -np.inf
        gain[np.arange(len(label)), label] = -np.inf
        best_move = np.unravel_index(np.argmax(gain), gain.shape)
        best = (gain[best_move], "move", best_move)
        # swaps: i (in a) <-> j (in b)
        a, b = label[:, None], label[None, :]
        swap = (link[np.arange(len(label))[:, None], b] - w) - own[:, None] \
            + (link[np.arange(len(label))[None, :], a] - w) - own[None, :]
        load_a = load[a] - sizes[:, None] + sizes[None, :]
        load_b = load[b] - sizes[None, :] + sizes[:, None]
        ok = (a != b) & ((load_a <= cap + 1e-9) | (count[a] == 1)) & ((load_b <= cap + 1e-9) | (count[b] == 1))
        swap[~ok] = -np.inf
        best_swap = np.unravel_index(np.argmax(swap), swap.shape)
        if swap[best_swap] > best[0]:
            best = (swap[best_swap], "swap", best_swap)
        if not best[0] > 1e-9:
            return label
        i, j = int(best[2][0]), int(best[2][1])
        if best[1] == "move":
            label[i] = j
        else:
            label[i], label[j] = label[j], label[i]


def rebalance(classes: list[str], conf: np.ndarray, sizes: np.ndarray, cap: float,
              groups: list[list[int]]) -> tuple[list[list[int]], int]:
    """The partition of the classes with the most confusion inside its groups (the merged accuracy) under the
    size ``cap``, by ``_local_search`` from ``groups`` and from ``REBALANCE_STARTS`` random balanced partitions
    per group count (from as few groups as the cap allows up to ``len(groups)``; a class bigger than the cap stands
    alone). Deterministic, and independent of the classes' order for a given ``groups`` (the search runs on the
    classes sorted by name; the agglomeration before it breaks exact ties by order). It maximises the confusion
    counts inside the groups (the merged accuracy, where a large class weighs more), not the agglomeration's
    row-normalised similarity. Returns the groups and the number of starts."""
    order = sorted(range(len(classes)), key=lambda i: classes[i])
    c = np.asarray(conf, float)[np.ix_(order, order)]
    sz = np.asarray(sizes, float)[order]
    w = c + c.T
    np.fill_diagonal(w, 0.0)
    pos = {i: r for r, i in enumerate(order)}

    def score(label: np.ndarray) -> float:
        return merged_accuracy(c, [np.flatnonzero(label == g) for g in set(label.tolist())])

    start = np.zeros(len(classes), int)  # groups numbered by their first class in name order: ties break the same way
    for g, members in enumerate(sorted(([pos[i] for i in m] for m in groups), key=min)):
        start[members] = g
    best = _local_search(w, sz, cap, start)
    best_score, starts = score(best), 1
    rng = np.random.default_rng(REBALANCE_SEED)
    alone = np.flatnonzero(sz > cap + 1e-9)  # a class bigger than the cap may only stand alone
    fewest = max(1, len(alone) + int(np.ceil(np.delete(sz, alone).sum() / cap - 1e-9)))
    for k in range(fewest, len(groups) + 1):
        for _ in range(REBALANCE_STARTS):
            label, load = np.zeros(len(classes), int), np.zeros(k)
            label[alone], load[:len(alone)] = np.arange(len(alone)), np.inf
            for i in rng.permutation(len(classes)):  # each other class to the lightest group: balanced
                if i in alone:
                    continue
                g = int(np.argmin(load))
                label[i], load[g] = g, load[g] + sz[i]
            if load[len(alone):].max(initial=0.0) > cap + 1e-9:
                continue
            label = _local_search(w, sz, cap, label)
            starts += 1
            found_score = score(label)
            if found_score > best_score + 1e-12:
                best, best_score = label, found_score
    found = [sorted(order[r] for r in np.flatnonzero(best == g)) for g in sorted(set(best.tolist()))]
    found.sort(key=lambda g: min(classes[i] for i in g))
    return found, starts
