"""Dedup speed on a folder of a few hundred real photos: python -m bench.dedup_speed [--folder DIR] [--baseline-ref REF].

Issue 10's case: ``client.dedup`` with its defaults (method cnn: Triton embedding + the geometric check of
the uncertain band) on a few hundred real photos, as a new user runs it. The folder (unless --folder) is
data/bench/dedup/speed/: every photo of the photoset byte for byte, plus --copies known copies of some of
them made with the calibration's transforms (bench.dedup_calibrate.TRANSFORMS, one each, in turn);
truth.json says which file shows which photo. A tritonserver is started for the run on free ports (unless
--triton-url), then each variant runs in its own process with an empty dedup store, against that server:

- ``baseline``: the library as it was at --baseline-ref (extracted with ``git archive``; its
  thresholds.json with it), timed from outside (its verify() and ORB features are wrapped with timers);
- ``current``: the library of this work tree, timed by itself (DedupResult.seconds_split);
- ``current, stored``: the same again on the now indexed folder (nothing to encode).

Printed and written to data/bench/dedup/speed.{json,md}: wall time split into read (files, sha256,
store upkeep), encoding, candidate search, geometric check and grouping; images/s; pairs checked;
groups; precision/recall of the pairs inside groups against truth.json (a folder without one: not
measured); and the speed-up over the baseline as a ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "bench" / "dedup"
BASELINE_REF = "f11d763"  # the last commit before issue 10's speed-up (skimage ORB/RANSAC, whole ensemble per image)
PHOTOSET = Path(os.environ.get("PHOTOSET_DIR", ROOT.parent / "shared" / "datasets" / "photoset"))


def build_folder(folder: Path, photos: Path, copies: int, seed: int = 0) -> dict[str, int]:
    """Every photo of ``photos`` plus ``copies`` transformed copies; returns {relative path: source}."""
    from bench.dedup_calibrate import TRANSFORMS, make_copy
    from client import spec

    truth_file = folder / "truth.json"
    files = sorted(p for p in photos.iterdir() if spec.is_image_file(p))
    if len(files) < 4:
        raise SystemExit(f"{photos}: need at least 4 photos, found {len(files)}")
    if truth_file.exists():
        truth = json.loads(truth_file.read_text())
        if len(truth) == len(files) + copies:
            return truth
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    truth = {}
    for s, p in enumerate(files):
        shutil.copyfile(p, folder / p.name)
        truth[p.name] = s
    rng = np.random.default_rng(seed)
    names = list(TRANSFORMS)
    for c, s in enumerate(np.linspace(0, len(files) - 1, copies).round().astype(int) if copies else []):
        t = names[c % len(names)]
        img = Image.open(files[s]).convert("RGB")
        name = f"copy_{c:03d}_{t}_{files[s].stem}.jpg"
        (folder / name).write_bytes(make_copy(img, t, rng))
        truth[name] = int(s)
    truth_file.write_text(json.dumps(truth, indent=0))
    return truth


def quality(groups: list[list[str]], truth: dict[str, int] | None, root: Path) -> dict:
    """Pairs inside groups that show the same photo (precision) and true pairs put in one group (recall)."""
    if truth is None:
        return {}
    tp = fp = 0
    for g in groups:
        c = Counter(truth[str(Path(p).relative_to(root))] for p in g)
        same = sum(v * (v - 1) // 2 for v in c.values())
        tp, fp = tp + same, fp + len(g) * (len(g) - 1) // 2 - same
    true_pairs = sum(v * (v - 1) // 2 for v in Counter(truth.values()).values())
    return {"precision": tp / max(tp + fp, 1), "recall": tp / max(true_pairs, 1), "true_pairs": true_pairs, "false_pairs": fp}


def run_phase(folder: Path, url: str, store: Path, wrap_baseline: bool, concurrency: int) -> dict:
    """One dedup run with the defaults (in this process's ``client`` package); its timings."""
    import client.dedup.cnn as cnn
    from client.dedup import dedup
    from client.triton import RetrievalClient

    timers = {"verify": 0.0, "orb": 0.0, "pairs": 0, "images": 0}
    if wrap_baseline:  # the old library reports search + verification + grouping as one number
        verify, orb = cnn.verify, cnn.orb_features

        def timed(fn, seconds: str, calls: str):
            def run(*a, **k):
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    timers[seconds] += time.perf_counter() - t
                    timers[calls] += 1
            return run
        cnn.verify, cnn.orb_features = timed(verify, "verify", "pairs"), timed(orb, "orb", "images")
    n = sum(1 for _ in folder.rglob("*") if _.is_file() and _.name != "truth.json")
    with RetrievalClient(url) as client:
        client.embedder_id()
        t = time.perf_counter()
        res = dedup(folder, "cnn", client=client, store_path=store, concurrency=concurrency, show_progress=False)
        wall = time.perf_counter() - t
    if wrap_baseline:
        geo = timers["verify"] + timers["orb"]
        split = {"search": None, "verify": geo, "group": res.seconds_search - geo, "pairs_checked": timers["pairs"]}
    else:
        split = dict(res.seconds_split) | {"pairs_checked": res.stats.get("pairs_checked", 0)}
    return {"images": n, "wall_s": wall, "images_per_s": n / wall, "encoded": res.encoded, "encode_s": res.seconds_encode,
            "read_s": wall - res.seconds_encode - res.seconds_search, "search_group_s": res.seconds_search, **split,
            "settings": res.settings, "groups": [g.images for g in res.groups]}


def _phase_process(label: str, args: argparse.Namespace, url: str, code_root: Path, store: Path, wrap: bool) -> dict:
    cmd = [sys.executable, "-m", "bench.dedup_speed", "--phase", "baseline" if wrap else "current", "--folder", str(args.folder),
           "--triton-url", url, "--store", str(store), "--concurrency", str(args.concurrency)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(code_root), str(ROOT)]))
    print(f"{label}: running ...", file=sys.stderr)
    proc = subprocess.run(cmd, cwd=code_root, env=env, stdout=subprocess.PIPE, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{label}: failed (exit {proc.returncode})")
    res = json.loads(line[-1][7:])
    print(f"{label}: {res['wall_s']:.1f} s, {res['images_per_s']:.2f} img/s", file=sys.stderr)
    return res


def extract(ref: str, dest: Path) -> Path:
    """The ``client`` package as it was at ``ref`` (git archive: read-only on the repository)."""
    data = subprocess.run(["git", "archive", "--format=tar", ref, "client"], cwd=ROOT, stdout=subprocess.PIPE, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _fmt(x, spec=".1f") -> str:
    return "–" if x is None else format(x, spec)


def table(rows: list[tuple[str, dict]], base: dict | None) -> list[str]:
    lines = ["| run | images | wall s | images/s | speed-up | read s | encode s | k-NN search s | geometric check s | grouping s | "
             "pairs checked | groups | precision | recall |", "|---" * 14 + "|"]
    for label, r in rows:
        ratio = f"{base['wall_s'] / r['wall_s']:.1f}×" if base else "–"
        group = r["group"]
        lines.append(f"| {label} | {r['images']} | {r['wall_s']:.1f} | {r['images_per_s']:.2f} | {ratio} | {r['read_s']:.1f} | "
                     f"{r['encode_s']:.1f} | {_fmt(r['search'])}{'' if r['search'] is not None else ' (in grouping)'} | "
                     f"{r['verify']:.1f} | {_fmt(group)} | {r['pairs_checked']} | {len(r['groups'])} | "
                     f"{_fmt(r.get('precision'), '.3f')} | {_fmt(r.get('recall'), '.3f')} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, help="a folder of images (default: build data/bench/dedup/speed/ from --photos); "
                    "its truth.json ({relative path: source id}) if any gives precision/recall")
    ap.add_argument("--photos", type=Path, default=PHOTOSET / "photos")
    ap.add_argument("--copies", type=int, default=60, help="known copies added to the photos (default %(default)s)")
    ap.add_argument("--baseline-ref", default=BASELINE_REF, help="git ref of the library to compare with ('none': skip)")
    ap.add_argument("--triton-url", default=os.environ.get("TRITON_URL"))
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight to Triton (the CLI's default)")
    ap.add_argument("--phase", choices=["baseline", "current"], help=argparse.SUPPRESS)  # internal: one run in a child process
    ap.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase:
        res = run_phase(args.folder, args.triton_url, args.store, args.phase == "baseline", args.concurrency)
        print("RESULT " + json.dumps(res))
        return 0

    truth = None
    if args.folder is None:
        args.folder = OUT / "speed"
        truth = build_folder(args.folder, args.photos, args.copies)
    elif (args.folder / "truth.json").exists():
        truth = json.loads((args.folder / "truth.json").read_text())
    args.folder = args.folder.resolve()
    work = Path(tempfile.mkdtemp(prefix="dedup_speed_"))
    server = None
    url = args.triton_url
    try:
        if not url:
            from deploy.local import LocalTriton, free_port

            server = LocalTriton(work / "triton", ROOT / "model_repository")
            url = server.up(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), timeout=300).grpc_url
        from client.triton import RetrievalClient

        with RetrievalClient(url) as client:  # warm-up: the first requests of a fresh server are slow
            data = next(p for p in sorted(args.folder.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")).read_bytes()
            for _ in range(3):
                client.infer(data)
        rows = []
        if args.baseline_ref != "none":
            old = extract(args.baseline_ref, work / "baseline")
            rows.append((f"baseline ({args.baseline_ref})", _phase_process("baseline", args, url, old, work / "store_base", True)))
        rows.append(("current", _phase_process("current", args, url, ROOT, work / "store_cur", False)))
        rows.append(("current, stored (re-run)", _phase_process("current, stored", args, url, ROOT, work / "store_cur", False)))
    finally:
        if server is not None:
            server.down()
        shutil.rmtree(work, ignore_errors=True)
    for _, r in rows:
        r.update(quality(r["groups"], truth, args.folder))
    base = rows[0][1] if args.baseline_ref != "none" else None
    lines = [f"# Dedup speed ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPU cores, load average "
             f"{os.getloadavg()[0]:.1f} at the end)", "",
             f"`{args.folder}`: {rows[0][1]['images']} images"
             + (f" ({len(set(truth.values()))} photos, {sum(v * (v - 1) // 2 for v in Counter(truth.values()).values())} known copy pairs)"
                if truth else "") + "; `client.dedup` defaults (cnn, calibrated rule), an empty store, "
             f"{args.concurrency} requests in flight; settings: baseline {rows[0][1]['settings']}, current {rows[-1][1]['settings']}.", ""]
    lines += table(rows, base)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "speed.json").write_text(json.dumps({"folder": str(args.folder), "rows": [{"run": k, **v} for k, v in rows]}, indent=1))
    (OUT / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
