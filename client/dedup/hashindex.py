"""Hamming-radius search over binary image hashes without an N x N matrix: multi-index hashing.

Norouzi, Punjani & Fleet, "Fast search in Hamming space with multi-index hashing" (CVPR 2012): cut each
``nbits`` code into ``m`` disjoint chunks. If two codes differ in at most ``r`` bits, some chunk differs
in at most ``r // m`` bits (pigeonhole), so every neighbour is found by looking up, in each chunk's
sorted table, the keys within ``r // m`` bits of the query's chunk, then checking the full distance.
Exact (same answers as brute force), and the work per query grows with the number of true candidates,
not with N. Codes are ``uint64`` integers (up to 64 bits: imagehash's default 8 x 8 hashes).
"""
from __future__ import annotations

from itertools import combinations
from typing import Iterator

import numpy as np

_POP16 = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)


def popcount64(x: np.ndarray) -> np.ndarray:
    """Bits set in each uint64 (numpy < 2 has no bitwise_count)."""
    x = np.ascontiguousarray(x, dtype=np.uint64)
    return _POP16[x.view(np.uint16).reshape(*x.shape, 4)].sum(axis=-1, dtype=np.int64)


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    return popcount64(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


def bits_to_int(bits: np.ndarray) -> int:
    """A boolean hash array (imagehash's ``ImageHash.hash``) -> an int, most significant bit first."""
    flat = np.asarray(bits, dtype=bool).ravel()
    if flat.size > 64:
        raise ValueError(f"hash of {flat.size} bits: this index holds at most 64 (use hash_size=8)")
    return int("".join("1" if v else "0" for v in flat) or "0", 2)


def _masks(width: int, radius: int) -> np.ndarray:
    """Every ``width``-bit mask with at most ``radius`` bits set."""
    out = [0]
    for r in range(1, min(radius, width) + 1):
        out += [sum(1 << b for b in bits) for bits in combinations(range(width), r)]
    return np.array(out, dtype=np.uint64)


class HammingIndex:
    """Multi-index hashing over ``codes`` (uint64 array, one code per item, ``nbits`` significant bits)."""

    def __init__(self, codes: np.ndarray, nbits: int = 64, chunks: int = 4):
        if not 1 <= nbits <= 64:
            raise ValueError(f"nbits must be 1..64, got {nbits}")
        if not 1 <= chunks <= nbits:
            raise ValueError(f"chunks must be 1..nbits, got {chunks}")
        self.codes = np.ascontiguousarray(codes, dtype=np.uint64).ravel()
        self.nbits, self.m = nbits, chunks
        edges = np.linspace(0, nbits, chunks + 1).round().astype(int)
        self._spans = [(int(lo), int(hi - lo)) for lo, hi in zip(edges[:-1], edges[1:])]  # (shift, width)
        self._tables = []
        for shift, width in self._spans:
            keys = self._chunk(self.codes, shift, width)
            order = np.argsort(keys, kind="stable")
            self._tables.append((keys[order], order))

    def __len__(self) -> int:
        return int(self.codes.size)

    @staticmethod
    def _chunk(codes: np.ndarray, shift: int, width: int) -> np.ndarray:
        return (codes >> np.uint64(shift)) & np.uint64((1 << width) - 1)

    def query(self, code: int, radius: int) -> list[tuple[int, int]]:
        """(index, distance) of every stored code within ``radius`` bits of ``code``, nearest first."""
        if len(self) == 0:
            return []
        q = np.array([code], dtype=np.uint64)
        found = []
        for (shift, width), (keys, order) in zip(self._spans, self._tables):
            targets = self._chunk(q, shift, width)[0] ^ _masks(width, radius // self.m)
            lo = np.searchsorted(keys, targets, "left")
            hi = np.searchsorted(keys, targets, "right")
            found += [order[a:b] for a, b in zip(lo, hi) if b > a]
        if not found:
            return []
        cand = np.unique(np.concatenate(found))
        d = hamming(self.codes[cand], code)
        keep = d <= radius
        pairs = sorted(zip(d[keep].tolist(), cand[keep].tolist()))
        return [(i, dist) for dist, i in pairs]

    def pairs(self, radius: int, block: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """All pairs (i < j) within ``radius`` bits, as blocks of (i, j, distance) arrays (self-join).

        Vectorised per (chunk, mask): codes whose chunk XOR mask equals another code's chunk are
        candidates; each block of ``block`` query rows is verified on the full code before the next.
        A pair found through several chunks is reported once per block.
        """
        n = len(self)
        for start in range(0, n, block):
            rows = np.arange(start, min(n, start + block))
            ii, jj = [], []
            for (shift, width), (keys, order) in zip(self._spans, self._tables):
                qk = self._chunk(self.codes[rows], shift, width)
                for mask in _masks(width, radius // self.m):
                    t = qk ^ mask
                    lo = np.searchsorted(keys, t, "left")
                    cnt = np.searchsorted(keys, t, "right") - lo
                    if not cnt.any():
                        continue
                    rep_rows = np.repeat(rows, cnt)
                    # position k within each run: lo[row] + (k - start of that row's run)
                    starts = np.repeat(np.cumsum(cnt) - cnt, cnt)
                    idx = np.repeat(lo, cnt) + (np.arange(cnt.sum()) - starts)
                    other = order[idx]
                    keep = other > rep_rows
                    ii.append(rep_rows[keep])
                    jj.append(other[keep])
            if not ii:
                continue
            i = np.concatenate(ii)
            j = np.concatenate(jj)
            if i.size == 0:
                continue
            key = np.unique(i.astype(np.int64) * n + j)
            i, j = key // n, key % n
            d = hamming(self.codes[i], self.codes[j])
            keep = d <= radius
            yield i[keep], j[keep], d[keep]


def brute_force_pairs(codes: np.ndarray, radius: int) -> set[tuple[int, int]]:
    """Reference answer for tests (O(N^2): small N only)."""
    codes = np.asarray(codes, dtype=np.uint64)
    out = set()
    for a in range(codes.size):
        d = hamming(codes[a + 1:], codes[a])
        out |= {(a, a + 1 + int(b)) for b in np.nonzero(d <= radius)[0]}
    return out
