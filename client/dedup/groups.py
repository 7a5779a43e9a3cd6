"""What a dedup run works on and returns: the facts of each file, groups of copies, the result.

Pure functions over plain data: which image of a group is kept (``keep_order``) and how near-duplicate
pairs become groups (``group_pairs``: direct copies of the kept image, or connected components).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np


@dataclass
class FileInfo:
    path: str
    sha256: str
    bytes: int
    mtime: float
    width: int = 0
    height: int = 0

    def payload(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes, "mtime": self.mtime,
                "width": self.width, "height": self.height}


@dataclass
class Group:
    images: list[str]  # the kept image first
    exact: bool  # every copy has the same bytes

    @property
    def count(self) -> int:
        return len(self.images)

    @property
    def keep(self) -> str:
        return self.images[0]


@dataclass
class DedupResult:
    method: str
    threshold: float
    scanned: int
    groups: list[Group]
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    encoded: int = 0  # features computed in this run (the rest were reused from the store)
    seconds_encode: float = 0.0
    seconds_search: float = 0.0
    settings: dict = field(default_factory=dict)  # the threshold(s) used, e.g. cnn's geometric check
    seconds_split: dict = field(default_factory=dict)  # seconds_search split: search, verify, group (k-NN methods)
    stats: dict = field(default_factory=dict)  # what the verification counted, e.g. {"pairs_checked": n}

    def to_json(self) -> dict:
        return {"method": self.method, "threshold": self.threshold, "settings": self.settings, "images": self.scanned,
                "groups": [{"images": g.images, "count": g.count, "keep": g.keep, "exact": g.exact} for g in self.groups],
                "errors": [{"path": p, "reason": r} for p, r in self.errors],
                "encoded": self.encoded, "seconds": {"encode": round(self.seconds_encode, 3), "search": round(self.seconds_search, 3)}}


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return [g for g in out.values() if len(g) > 1]


def keep_order(infos: list[FileInfo]) -> list[FileInfo]:
    """The image kept comes first: largest resolution, then largest file, then oldest, then shortest path."""
    return sorted(infos, key=lambda f: (-(f.width * f.height), -f.bytes, f.mtime, len(f.path), f.path))


def group_pairs(files: list[FileInfo], pairs: Iterable[tuple[int, int]], *, transitive: bool = False) -> list[list[int]]:
    """Groups of positions in ``files`` from near-duplicate pairs; exact copies (same sha256) always share a group.

    Default: each group is an image to keep and the images that are DIRECT near-duplicates of it, taken
    in keep order (largest first), so a chain A~B~C of small steps does not merge A and C when they are
    not alike themselves. ``transitive``: connected components (union-find), which can chain.
    """
    uf = UnionFind(len(files))
    first_of: dict[str, int] = {}
    for k, f in enumerate(files):  # exact copies
        uf.union(first_of.setdefault(f.sha256, k), k)
    if transitive:
        for i, j in pairs:
            uf.union(i, j)
        return uf.groups()
    adj: dict[int, set[int]] = {}
    for i, j in pairs:
        ri, rj = uf.find(i), uf.find(j)
        if ri != rj:
            adj.setdefault(ri, set()).add(rj)
            adj.setdefault(rj, set()).add(ri)
    units: dict[int, list[int]] = {}
    for k in range(len(files)):
        units.setdefault(uf.find(k), []).append(k)
    rank = {id(f): r for r, f in enumerate(keep_order(files))}
    order = sorted(units, key=lambda root: min(rank[id(files[k])] for k in units[root]))
    taken: set[int] = set()
    groups = []
    for root in order:
        if root in taken:
            continue
        taken.add(root)
        members = list(units[root])
        for other in adj.get(root, ()):
            if other not in taken:
                taken.add(other)
                members += units[other]
        if len(members) > 1:
            groups.append(members)
    return groups


def make_groups(files: list[FileInfo], pairs: Iterable[tuple[int, int]], *, transitive: bool = False) -> list[Group]:
    """The groups of a run: each one in keep order, the largest groups first."""
    groups = []
    for members in group_pairs(files, pairs, transitive=transitive):
        ordered = keep_order([files[k] for k in members])
        groups.append(Group([f.path for f in ordered], len({f.sha256 for f in ordered}) == 1))
    groups.sort(key=lambda g: (-g.count, g.keep))
    return groups
