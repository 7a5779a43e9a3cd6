"""The one base class of the dedup methods; it owns the flow, subclasses only answer its questions.

``Method.dedup(folder)``: read the folder (sha256, size) and bring the method's collection in the store
in line with it (a file whose path and sha256 are stored is never recomputed; files gone are dropped;
exact copies are encoded once), read every feature back, find candidate pairs through an index (never
an N x N matrix), verify them when the method says so, group them. ``Method.check(images, folder)``
asks the same index about new images without adding them.

What a subclass defines: ``name``, ``feature(img)`` and ``score(a, b)`` (or ``encode`` when features
come from elsewhere), and where it differs from a plain vector in Qdrant: how a feature is stored
(``to_vector``, ``payload``, ``from_record``), how the index is searched (``candidate_pairs``,
``lookup``), and the search plan of a threshold (``plan``: the store's threshold and an optional
verification of each candidate pair). hashing.py, pixels.py and cnn.py hold the subclasses.
"""
from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from client.dedup.groups import DedupResult, FileInfo, make_groups
from client.dedup.thresholds import Thresholds, load_thresholds
from client.imaging import ImageDecodeError, decode, list_images
from client.store import DedupStore, dedup_point_id

NEIGHBOURS = 32  # k of the k-NN candidate search: copies linked directly per image (grouping links more)
OPTIMIZE_AFTER = 5000  # points added in one run from which the store's HNSW index is (re)built

Features = dict[str, object]
Errors = list[tuple[str, str]]  # (name or path, reason)


@dataclass
class Plan:
    """How one run searches: the store's threshold for candidates, the settings reported (``threshold``
    first), and, when candidates need a second look, ``verify(i, j, store score)`` over positions, or its
    batch form ``verify_many([(i, j, score), ...])`` (one list of answers; cnn's geometric check runs the
    batch in a thread pool). ``stats`` is what the verification counted (cnn: pairs checked)."""
    store_threshold: float
    settings: dict
    verify: Callable[[int, int, float], bool] | None = None
    verify_many: Callable[[list[tuple[int, int, float]]], list[bool]] | None = None
    stats: dict = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return self.settings["threshold"]

    @property
    def verifies(self) -> bool:
        return self.verify is not None or self.verify_many is not None

    def judge(self, pairs: list[tuple[int, int, float]]) -> list[bool]:
        """Which candidate pairs (i, j, store score) pass the verification."""
        if self.verify_many is not None:
            return list(self.verify_many(pairs))
        if self.verify is not None:
            return [self.verify(i, j, score) for i, j, score in pairs]
        return [True] * len(pairs)


class Method:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    lower_is_similar: ClassVar[bool] = False
    dim: int = 0  # vector dimension in the store
    distance: ClassVar[str] = "cosine"  # the store's distance for the vector
    needs_server: ClassVar[bool] = False
    read_vectors: ClassVar[bool] = True  # the feature is read back from the stored vector (see from_record)

    def __init__(self, client=None, *, concurrency: int = 4):
        self.client = client  # a client.triton.RetrievalClient, for the methods that need the server
        self.concurrency = concurrency

    # What a method is --------------------------------------------------------------------------------

    def feature(self, img: Image.Image):
        raise NotImplementedError

    def score(self, a, b) -> float:
        raise NotImplementedError

    def similar(self, score: float, threshold: float) -> bool:
        return score <= threshold if self.lower_is_similar else score >= threshold

    def encode(self, items: list[tuple[str, bytes]], progress: Callable[[int], object] | None = None) -> tuple[Features, Errors]:
        """Features of encoded images: ({name: feature}, [(name, reason) of the ones that failed])."""
        feats: Features = {}
        errors: Errors = []
        for name, data in items:
            try:
                feats[name] = self.feature(decode(data))
            except ImageDecodeError as exc:
                errors.append((name, str(exc)))
            if progress:
                progress(1)
        return feats, errors

    # How it is stored and searched ---------------------------------------------------------------------

    @property
    def store_key(self) -> str:
        """The collection's method part: methods with the same stored features share one collection."""
        return self.name

    def open_store(self, name: str, path: Path | None = None) -> DedupStore:
        return DedupStore(name, self.store_key, self.dim, self.distance, path=path)

    def to_vector(self, feature) -> np.ndarray:
        return np.asarray(feature, dtype=np.float32)

    def payload(self, feature) -> dict:
        """What the feature adds to a point's payload."""
        return {}

    def from_record(self, payload: dict, vector: np.ndarray | None):
        return vector

    def after_upsert(self, store: DedupStore, added: int) -> None:
        if added >= OPTIMIZE_AFTER:
            store.optimize()

    def store_threshold(self, threshold: float) -> float:
        """A threshold in this method's units -> the store's score."""
        return threshold

    def resolve(self, threshold: float | None) -> float:
        """``threshold``, or the calibrated one when None."""
        return threshold if threshold is not None else load_thresholds().get(self.name)

    def plan(self, threshold: float | None, feats: list, paths: list[str]) -> Plan:
        """The search of a run at ``threshold`` (None: the calibrated one) over features at positions."""
        t = self.resolve(threshold)
        return Plan(self.store_threshold(t), {"threshold": t})

    def candidate_pairs(self, plan: Plan, ids: list[str], feats: list, store: DedupStore,
                        show_progress: bool = True) -> Iterable[tuple[int, int]]:
        """Pairs (i, j) of positions within the plan's store threshold, and passed by its verify()."""
        pos = {pid: k for k, pid in enumerate(ids)}
        vecs = np.stack([self.to_vector(f) for f in feats])
        step = 2048
        seen: set[tuple[int, int]] = set()
        timing = plan.stats.setdefault("seconds", {"search": 0.0, "verify": 0.0})
        with tqdm(total=len(ids), desc=f"searching (qdrant k-NN, {self.name})", unit="img", disable=not show_progress) as bar:
            for s in range(0, len(ids), step):
                t = time.perf_counter()
                found: list[tuple[int, int, float]] = []
                for k, hits in enumerate(store.neighbours(vecs[s:s + step], limit=NEIGHBOURS, threshold=plan.store_threshold), start=s):
                    for pid, score in hits:
                        j = pos.get(pid)
                        if j is None or j == k:
                            continue
                        pair = (k, j) if k < j else (j, k)
                        if plan.verifies:  # each pair is judged once (it comes back from both ends)
                            if pair in seen:
                                continue
                            seen.add(pair)
                        found.append((*pair, score))
                timing["search"] += time.perf_counter() - t
                t = time.perf_counter()
                passed = plan.judge(found) if plan.verifies else [True] * len(found)
                timing["verify"] += time.perf_counter() - t
                bar.update(min(step, len(ids) - s))
                yield from ((i, j) for (i, j, _), ok in zip(found, passed) if ok)

    def lookup(self, plan: Plan, store: DedupStore, ids: list[str], feats: list, queries: list[int]) -> list[list[tuple[int, float]]]:
        """Per query position (after the stored ones): (stored position, score in this method's units) of its copies."""
        if not queries:
            return []
        pos = {pid: k for k, pid in enumerate(ids)}
        hits = store.neighbours(np.stack([self.to_vector(feats[q]) for q in queries]), limit=NEIGHBOURS,
                                threshold=plan.store_threshold)
        out = []
        for q, row in zip(queries, hits):
            found = [(q, pos[pid], score) for pid, score in row]
            kept = [j for (_, j, _), ok in zip(found, plan.judge(found)) if ok]
            out.append([(k, self.score(feats[q], feats[k])) for k in kept])
        return out

    # What client.compare asks ----------------------------------------------------------------------------

    def unavailable(self) -> str | None:
        """Why this method cannot run now (None: it can)."""
        return None

    def calibration_matches(self, thresholds: Thresholds) -> bool:
        """False (with a StaleCalibration warning) when the calibrated threshold does not apply here."""
        return True

    def pair_features(self, datas: tuple[bytes, bytes], images: tuple[Image.Image, Image.Image], names: tuple[str, str]):
        return self.feature(images[0]), self.feature(images[1])

    def judge(self, score: float, thresholds: Thresholds, images) -> tuple[bool | None, str]:
        """(duplicate? None when uncalibrated, a note) of a pair at the calibrated threshold."""
        t = thresholds.values.get(self.name)
        return (None if t is None else self.similar(score, t)), ""

    # The flow ------------------------------------------------------------------------------------------

    def index_folder(self, paths: list[Path], store: DedupStore, *, show_progress: bool = True) -> tuple[list[FileInfo], Errors, int, float]:
        """Brings the store in line with a folder's image files; returns (infos, errors, number encoded, seconds encoding)."""
        stored = {p["path"]: (pid, p) for pid, p, _ in store.records(with_vectors=False)}
        infos: list[FileInfo] = []
        errors: Errors = []
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
                info.width, info.height = image_size(data)
            except ImageDecodeError as exc:
                errors.append((info.path, str(exc)))
                continue
            infos.append(info)
            if info.sha256 not in todo:
                datas[info.sha256] = data
            todo.setdefault(info.sha256, []).append(info)
        t = time.perf_counter()
        with tqdm(total=len(todo), desc=f"encoding ({self.name})", unit="img", disable=not show_progress) as bar:
            feats, bad = self.encode([(sha, datas.pop(sha)) for sha in list(todo)], progress=bar.update)
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
                ids.append(dedup_point_id(info.path))
                vecs.append(self.to_vector(feat))
                payloads.append(info.payload() | self.payload(feat))
        present = {i.path for i in infos}
        store.delete([pid for path, (pid, _) in stored.items() if path not in present])
        if ids:
            store.upsert(ids, np.stack(vecs), payloads)
            self.after_upsert(store, len(ids))
        return infos, errors, len(feats), seconds

    def dedup(self, folder: Path, threshold: float | None = None, *, name: str | None = None, store_path: Path | None = None,
              show_progress: bool = True, transitive: bool = False) -> DedupResult:
        paths = list_images(folder)
        with self.open_store(name or default_name(folder), store_path) as store:
            infos, errors, encoded, t_enc = self.index_folder(paths, store, show_progress=show_progress)
            t = time.perf_counter()
            by_path = {i.path: i for i in infos}
            ids, feats, files = [], [], []
            for pid, payload, vec in store.records(with_vectors=self.read_vectors):
                info = by_path.get(payload.get("path"))
                if info is not None:
                    ids.append(pid)
                    feats.append(self.from_record(payload, vec))
                    files.append(info)
            plan = self.plan(threshold, feats, [f.path for f in files])
            pairs = self.candidate_pairs(plan, ids, feats, store, show_progress) if files else iter(())
            groups = make_groups(files, pairs, transitive=transitive)
            t_search = time.perf_counter() - t
        stats = dict(plan.stats)
        seconds = stats.pop("seconds", {})
        if seconds:  # the rest of search + grouping: reading the store back, the plan, grouping
            seconds["group"] = max(0.0, t_search - sum(seconds.values()))
        return DedupResult(self.name, plan.threshold, len(infos) + len(errors), groups, sorted(errors), encoded, t_enc, t_search,
                           plan.settings, seconds, stats)

    def check(self, images: list[Path], folder: Path, threshold: float | None = None, *, name: str | None = None,
              store_path: Path | None = None) -> tuple[dict[str, list[tuple[str, float]]], Errors]:
        """Each new image's copies in an already indexed folder, as (path, score); nothing is added to the index."""
        items, errors = [], []
        for p in images:
            try:
                items.append((str(p), p.read_bytes()))
            except OSError as exc:
                errors.append((str(p), f"cannot read: {exc.strerror or exc}"))
        with self.open_store(name or default_name(folder), store_path) as store:
            if store.count() == 0:
                raise ValueError(f"{store.where} is empty: index the folder first (python -m client.dedup {folder} --method {self.name})")
            found, bad = self.check_data(items, store, threshold)
        return found, errors + bad

    def check_data(self, items: list[tuple[str, bytes]], store: DedupStore,
                   threshold: float | None = None) -> tuple[dict[str, list[tuple[str, float]]], Errors]:
        """Each encoded image (name, bytes)'s copies among the points of an open, indexed ``store``, as (path,
        score), and (name, reason) of the images that could not be read; nothing is added (the web service's
        POST /dedup/check: an upload never becomes a file)."""
        feats, errors = self.encode(items)
        records = list(store.records(with_vectors=self.read_vectors))
        names = list(feats)
        paths = [p["path"] for _, p, _ in records] + names  # positions: the stored records, then the new images
        allfeats = [self.from_record(p, v) for _, p, v in records] + [feats[n] for n in names]
        plan = self.plan(threshold, allfeats, paths)
        hits = self.lookup(plan, store, [pid for pid, _, _ in records], allfeats, list(range(len(records), len(paths))))
        return {n: [(paths[k], score) for k, score in row] for n, row in zip(names, hits)}, errors


def read_file(path: Path) -> tuple[bytes, FileInfo]:
    """The bytes and facts of one file; OSError names the reason."""
    data = path.read_bytes()
    st = path.stat()
    return data, FileInfo(str(path), hashlib.sha256(data).hexdigest(), len(data), st.st_mtime)


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes): not a known image format") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes): {exc}") from exc


def default_name(folder: Path) -> str:
    base = "".join(c if c.isalnum() else "_" for c in folder.resolve().name) or "root"
    return f"{base}_{hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]}"
