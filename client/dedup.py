"""python -m client.dedup DIR: groups of duplicate and near-duplicate images, with the number of copies.

Exact duplicates are found by content hash (sha256 of the file). Near-duplicates by one method
(``--method``, default ``cnn``: the Triton ensemble's whole-image embedding) at its calibrated threshold
(client/dedup_thresholds.json) unless ``--threshold`` is given. Features live in a dedup collection
(``dedup_<name>_<method>``, see client.store.DedupStore): a file whose sha256 is already stored is never
recomputed, and ``--check IMG`` tests new images against the indexed folder without adding them.
Candidates come from an index, never from an N x N matrix: Qdrant k-NN with a score threshold for
vectors, multi-index hashing (client.hashindex) for hashes; pairs are joined into groups by union-find.
Exit status: 0 done, 3 done but some files were skipped (listed on stderr), 1 nothing could be done.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from client.dedup_methods import METHODS, Method, PixelEuclid, get
from client.hashindex import HammingIndex
from client.imaging import ImageDecodeError, decode
from client.store import DedupStore, dedup_point_id

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
NEIGHBOURS = 32  # k of the k-NN candidate search: copies linked directly per image (union-find links more)
SSIM_CANDIDATE_RMS = 0.25  # SSIM verifies the k-NN within this RMS grey distance


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

    def to_json(self) -> dict:
        return {"method": self.method, "threshold": self.threshold, "settings": self.settings, "images": self.scanned,
                "groups": [{"images": g.images, "count": g.count, "keep": g.keep, "exact": g.exact} for g in self.groups],
                "errors": [{"path": p, "reason": r} for p, r in self.errors],
                "encoded": self.encoded, "seconds": {"encode": round(self.seconds_encode, 3), "search": round(self.seconds_search, 3)}}


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a directory")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_file(path: Path) -> tuple[bytes, FileInfo]:
    """The bytes and facts of one file; OSError and ImageDecodeError name the reason."""
    data = path.read_bytes()
    st = path.stat()
    info = FileInfo(str(path), hashlib.sha256(data).hexdigest(), len(data), st.st_mtime)
    return data, info


def _size(data: bytes) -> tuple[int, int]:
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes): not a known image format") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes): {exc}") from exc


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


# Features -----------------------------------------------------------------------------------------------

def encode(method: Method, items: list[tuple[str, bytes]], *, client=None, concurrency: int = 4,
           progress: Callable[[int], None] | None = None) -> tuple[dict[str, object], list[tuple[str, str]]]:
    """Features of encoded images: ({name: feature}, [(name, reason) of the ones that failed])."""
    feats: dict[str, object] = {}
    errors: list[tuple[str, str]] = []
    if method.needs_server:
        if client is None:
            raise ValueError(f"method {method.name!r} needs a Triton client")
        from client.triton import BadImage

        for name, res in client.infer_many(items, concurrency=concurrency):
            if isinstance(res, BadImage):
                errors.append((name, str(res).removeprefix(f"{name}: ")))
            else:
                feats[name] = res.image_embedding
            if progress:
                progress(1)
        return feats, errors
    for name, data in items:
        try:
            feats[name] = method.feature(decode(data))
        except ImageDecodeError as exc:
            errors.append((name, str(exc)))
        if progress:
            progress(1)
    return feats, errors


def to_vector(method: Method, feature) -> np.ndarray:
    if method.kind == "hash":  # +-1 bits: dot = 64 - 2 * Hamming
        code = int(feature)
        return np.array([1.0 if (code >> (63 - b)) & 1 else -1.0 for b in range(64)], dtype=np.float32)
    return np.asarray(feature, dtype=np.float32)


def _stored_feature(method: Method, payload: dict, vector: np.ndarray | None):
    if method.kind == "hash":
        return int(payload["code"], 16)
    return vector


# The index of a folder --------------------------------------------------------------------------------

def default_name(folder: Path) -> str:
    base = "".join(c if c.isalnum() else "_" for c in folder.resolve().name) or "root"
    return f"{base}_{hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]}"


def index_folder(folder: Path, method: Method, store: DedupStore, *, client=None, concurrency: int = 4,
                 show_progress: bool = True) -> tuple[list[FileInfo], list[tuple[str, str]], int, float]:
    """Brings the store in line with the folder; returns (infos, errors, number encoded, seconds encoding).

    A file whose (path, sha256) is stored already is not recomputed; points of files gone from the
    folder are dropped. Exact copies are encoded once (the feature is shared).
    """
    import time

    from tqdm import tqdm

    paths = list_images(folder)
    stored = {p["path"]: (pid, p) for pid, p, _ in store.records(with_vectors=False)}
    infos: list[FileInfo] = []
    errors: list[tuple[str, str]] = []
    todo: dict[str, list[FileInfo]] = {}  # sha256 -> files needing a feature
    datas: dict[str, bytes] = {}
    for p in tqdm(paths, desc="reading", unit="img", disable=not show_progress):
        try:
            data, info = read_file(p)
        except OSError as exc:
            errors.append((str(p), f"cannot read: {exc.strerror or exc}"))
            continue
        old = stored.get(info.path)
        if old and old[1].get("sha256") == info.sha256:
            info.width, info.height = old[1].get("width", 0), old[1].get("height", 0)
            infos.append(info)
            continue
        try:
            info.width, info.height = _size(data)
        except ImageDecodeError as exc:
            errors.append((info.path, str(exc)))
            continue
        infos.append(info)
        if info.sha256 not in todo:
            datas[info.sha256] = data
        todo.setdefault(info.sha256, []).append(info)
    t = time.perf_counter()
    with tqdm(total=len(todo), desc=f"encoding ({method.name})", unit="img", disable=not show_progress) as bar:
        feats, bad = encode(method, [(sha, datas.pop(sha)) for sha in list(todo)], client=client,
                            concurrency=concurrency, progress=bar.update)
    seconds = time.perf_counter() - t
    bad_files = set()
    for sha, reason in bad:
        for info in todo[sha]:
            errors.append((info.path, reason))
            bad_files.add(info.path)
    infos = [i for i in infos if i.path not in bad_files]
    ids, vecs, payloads = [], [], []
    for sha, feat in feats.items():
        for info in todo[sha]:
            payload = info.payload()
            if method.kind == "hash":
                payload["code"] = f"{int(feat):016x}"
            ids.append(dedup_point_id(info.path))
            vecs.append(to_vector(method, feat))
            payloads.append(payload)
    present = {i.path for i in infos}
    store.delete([pid for path, (pid, _) in stored.items() if path not in present])
    if ids:
        store.upsert(ids, np.stack(vecs), payloads)
        if len(ids) >= 5000 and method.kind != "hash":  # the hash self-join uses client.hashindex
            store.optimize()
    return infos, errors, len(feats), seconds


def candidate_pairs(method: Method, store_threshold: float, ids: list[str], feats: list, store: DedupStore,
                    accept: Callable[[int, int, float], bool] | None = None, show_progress: bool = True) -> Iterable[tuple[int, int]]:
    """Pairs (i, j) of positions in ``ids`` found by the index within ``store_threshold`` (Hamming bits for
    hashes; the store's score otherwise) and, when given, passed by ``accept(i, j, store score)``."""
    from tqdm import tqdm

    if method.kind == "hash":
        index = HammingIndex(np.array(feats, dtype=np.uint64))
        for i, j, _ in tqdm(index.pairs(int(store_threshold)), desc="searching (hash index)", unit="block", disable=not show_progress):
            yield from zip(i.tolist(), j.tolist())
        return
    pos = {pid: k for k, pid in enumerate(ids)}
    vecs = np.stack(feats).astype(np.float32)
    step = 2048
    seen: set[tuple[int, int]] = set()
    with tqdm(total=len(ids), desc=f"searching (qdrant k-NN, {method.name})", unit="img", disable=not show_progress) as bar:
        for s in range(0, len(ids), step):
            for k, hits in enumerate(store.neighbours(vecs[s:s + step], limit=NEIGHBOURS, threshold=store_threshold), start=s):
                for pid, score in hits:
                    j = pos.get(pid)
                    if j is None or j == k:
                        continue
                    pair = (k, j) if k < j else (j, k)
                    if accept is not None:
                        if pair in seen:  # each pair is judged once (it comes back from both ends)
                            continue
                        seen.add(pair)
                        if not accept(k, j, score):
                            continue
                    yield pair
            bar.update(min(step, len(ids) - s))


def search_plan(method: Method, threshold: float | None, feats: list, geo: Callable[[int], object] | None):
    """(store threshold, accept callback or None, description) of a method at a threshold (None: calibrated)."""
    from client.dedup_methods import cnn_rule, load_thresholds, verify

    if method.name == "cnn":
        rule = cnn_rule(threshold)
        if rule.candidate is None or geo is None:
            return rule.threshold, None, {"threshold": rule.threshold}
        accept = lambda i, j, score: rule.decide(score, lambda: verify(geo(i), geo(j)))  # noqa: E731
        return rule.candidate, accept, {"threshold": rule.threshold, "candidate": rule.candidate, "min_inliers": rule.min_inliers}
    t = threshold if threshold is not None else load_thresholds().get(method.name)
    if method.kind == "ssim":
        accept = lambda i, j, score: method.similar(method.score(feats[i], feats[j]), t)  # noqa: E731
        return PixelEuclid.store_threshold(SSIM_CANDIDATE_RMS), accept, {"threshold": t}
    if isinstance(method, PixelEuclid):
        return PixelEuclid.store_threshold(t), None, {"threshold": t}
    return t, None, {"threshold": t}


def geo_features(paths: list[str]) -> Callable[[int], object]:
    """Lazily computed, cached ORB features of files (for the cnn geometric check)."""
    from client.dedup_methods import orb_features

    cache: dict[int, object] = {}

    def get(k: int):
        if k not in cache:
            try:
                cache[k] = orb_features(decode(Path(paths[k]).read_bytes()))
            except (OSError, ImageDecodeError):
                cache[k] = ((np.zeros((0, 2)), np.zeros((0, 256), dtype=bool)),) * 2
        return cache[k]
    return get


def open_store(method: Method, name: str, path: Path | None = None) -> DedupStore:
    return DedupStore(name, method.name if method.kind != "ssim" else "pixel_euclid", method.dim, method.distance, path=path)


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


def dedup(folder: Path, method_name: str, threshold: float | None = None, *, name: str | None = None, client=None,
          store_path: Path | None = None, concurrency: int = 4, show_progress: bool = True, transitive: bool = False) -> DedupResult:
    import time

    method = get(method_name)
    with open_store(method, name or default_name(folder), store_path) as store:
        infos, errors, encoded, t_enc = index_folder(folder, method, store, client=client, concurrency=concurrency,
                                                     show_progress=show_progress)
        t = time.perf_counter()
        by_path = {i.path: i for i in infos}
        ids, feats, files = [], [], []
        for pid, payload, vec in store.records(with_vectors=method.kind != "hash"):
            info = by_path.get(payload.get("path"))
            if info is None:
                continue
            ids.append(pid)
            feats.append(_stored_feature(method, payload, vec))
            files.append(info)
        store_t, accept, settings = search_plan(method, threshold, feats, geo_features([f.path for f in files]))
        pairs = candidate_pairs(method, store_t, ids, feats, store, accept, show_progress) if files else iter(())
        groups = []
        for members in group_pairs(files, pairs, transitive=transitive):
            ordered = keep_order([files[k] for k in members])
            groups.append(Group([f.path for f in ordered], len({f.sha256 for f in ordered}) == 1))
        groups.sort(key=lambda g: (-g.count, g.keep))
        t_search = time.perf_counter() - t
    return DedupResult(method.name, settings["threshold"], len(infos) + len(errors), groups, sorted(errors), encoded, t_enc, t_search,
                       settings)


def check(images: list[Path], folder: Path, method_name: str, threshold: float | None = None, *, name: str | None = None,
          client=None, store_path: Path | None = None) -> tuple[dict[str, list[tuple[str, float]]], list[tuple[str, str]]]:
    """Each new image's copies in an already indexed folder, as (path, score); nothing is added to the index."""
    method = get(method_name)
    items, errors = [], []
    for p in images:
        try:
            items.append((str(p), p.read_bytes()))
        except OSError as exc:
            errors.append((str(p), f"cannot read: {exc.strerror or exc}"))
    feats, bad = encode(method, items, client=client)
    errors += bad
    out: dict[str, list[tuple[str, float]]] = {}
    with open_store(method, name or default_name(folder), store_path) as store:
        if store.count() == 0:
            raise ValueError(f"{store.where} is empty: index the folder first (python -m client.dedup {folder} --method {method.name})")
        records = list(store.records(with_vectors=method.kind != "hash"))
        names = list(feats)
        # positions: stored records first, then the new images (for the accept callbacks)
        paths = [p["path"] for _, p, _ in records] + names
        allfeats = [_stored_feature(method, p, v) for _, p, v in records] + [feats[n] for n in names]
        store_t, accept, _ = search_plan(method, threshold, allfeats, geo_features(paths))
        if method.kind == "hash":
            index = HammingIndex(np.array(allfeats[:len(records)], dtype=np.uint64))
            for n, code in feats.items():
                out[n] = [(paths[i], float(d)) for i, d in index.query(int(code), int(store_t))]
            return out, errors
        pos = {pid: k for k, (pid, _, _) in enumerate(records)}
        hits = store.neighbours(np.stack([to_vector(method, feats[n]) for n in names]), limit=NEIGHBOURS, threshold=store_t) if names else []
        for q, (n, row) in enumerate(zip(names, hits), start=len(records)):
            kept = [(pos[pid], score) for pid, score in row if accept is None or accept(q, pos[pid], score)]
            out[n] = [(paths[k], method.score(allfeats[q], allfeats[k])) for k, _ in kept]
    return out, errors


# CLI ----------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    import argparse
    import warnings

    from client import dedup_output as out
    from client.cli import add_triton_url
    from client.dedup_methods import DEFAULT_METHOD, load_thresholds
    from client.store import StoreError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS),
                    help="near-duplicate measure (default %(default)s); exact copies are always found by sha256")
    ap.add_argument("--threshold", type=float, help="default: the calibrated one in client/dedup_thresholds.json "
                    "(Hamming bits for hashes, RMS grey difference for pixel_euclid, similarity otherwise)")
    ap.add_argument("--transitive", action="store_true", help="groups = connected components (A~B and B~C put A, C "
                    "together); default: each group is the kept image and its direct near-duplicates")
    ap.add_argument("--name", help="dedup collection name (default: from the folder's path)")
    ap.add_argument("--store-path", type=Path, help="embedded index folder (default $DEDUP_PATH or data/dedup)")
    ap.add_argument("--check", type=Path, nargs="+", metavar="IMG", help="only report which of these new images "
                    "have copies in FOLDER (indexed first, reusing stored features); they are not added")
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help='one object: {"groups": [{"images": [...], "count": n, ...}]}')
    fmt.add_argument("--csv", action="store_true")
    ap.add_argument("--html", type=Path, metavar="FILE", help="also write a page with each group's thumbnails")
    ap.add_argument("--move-to", type=Path, metavar="DIR", help="plan moving every copy but the kept one to DIR")
    ap.add_argument("--delete", action="store_true", help="plan deleting every copy but the kept one")
    ap.add_argument("--apply", action="store_true", help="carry out --move-to/--delete (default: a dry run)")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight to Triton (default %(default)s)")
    add_triton_url(ap)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    err = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    if args.move_to and args.delete:
        ap.error("give --move-to or --delete, not both")
    if args.apply and not (args.move_to or args.delete):
        ap.error("--apply needs --move-to or --delete")
    method = METHODS[args.method]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if args.threshold is None:
                load_thresholds().get(method.name)  # fails early (or warns) before any work
        for w in caught:
            err(f"warning: {w.message}")
    except ValueError as exc:
        err(f"error: {exc}")
        return 1
    threshold = args.threshold
    client = None
    try:
        if method.needs_server:
            from client.triton import RetrievalClient

            client = RetrievalClient(args.triton_url)
        common = dict(name=args.name, client=client, store_path=args.store_path)
        result = dedup(args.folder, method.name, threshold, concurrency=args.concurrency, show_progress=not args.quiet,
                       transitive=args.transitive, **common)
        if args.check:
            found, bad = check(args.check, args.folder, method.name, threshold, **common)
    except (NotADirectoryError, ValueError, StoreError, RuntimeError) as exc:
        err(f"error: {exc}")
        return 1
    finally:
        if client is not None:
            client.close()
    for path, reason in result.errors:
        err(f"skipped {path}: {reason}")
    if args.check:
        for path, reason in bad:
            err(f"skipped {path}: {reason}")
        if args.json:
            print(json.dumps({"checked": [{"image": k, "copies": [{"path": p, "score": s} for p, s in v]} for k, v in found.items()]}, indent=1))
        else:
            for k, v in found.items():
                print(f"{k}: " + (", ".join(f"{p} ({s:.3g})" for p, s in v) if v else "no copy in the collection"))
        return 3 if bad or result.errors else 0
    if args.json:
        print(out.to_json(result))
    elif args.csv:
        print(out.to_csv(result), end="")
    else:
        print(out.table(result))
        copies = sum(g.count - 1 for g in result.groups)
        print(f"\n{copies} redundant copies; encoded {result.encoded} new image(s) in {result.seconds_encode:.1f} s, "
              f"search + grouping {result.seconds_search:.1f} s")
    if args.html:
        args.html.write_text(out.to_html(result))
        err(f"wrote {args.html}")
    if args.move_to or args.delete:
        actions = out.plan(result, move_to=args.move_to, delete=args.delete, root=args.folder)
        failed = out.apply(actions, dry_run=not args.apply, log=err)
        if not args.apply and actions:
            err(f"dry run: nothing was changed; add --apply to {'delete' if args.delete else 'move'} {len(actions)} file(s)")
        for p, reason in failed:
            err(f"failed {p}: {reason}")
        if failed:
            return 1
    return 3 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
