"""python -m export.build [--profile quick|full]: trains what is missing, exports ONNX, writes model_repository/.

quick: CPU, a few minutes (the demo and the tests use it). full: more data and epochs (hours on CPU,
minutes on a GPU). Heads train on cached frozen-backbone features; everything is seeded.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from client import spec
from export import repository

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOSET = ROOT.parent / "shared" / "datasets" / "photoset"

PROFILES = {
    "quick": ({"synthetic_per_class": 6, "scenes": 2000, "catalog_views": 300},
              {"det_epochs": 25, "cls_epochs": 150, "emb_epochs": 60}),
    "full": ({"synthetic_per_class": 30, "scenes": 8000, "catalog_views": 1500},
             {"det_epochs": 80, "cls_epochs": 300, "emb_epochs": 120}),
}


def onnx_path(repo: Path, name: str) -> Path:
    return repo / name / "1" / "model.onnx"


def missing_models(repo: Path) -> list[str]:
    return [m.name for m in spec.ONNX_MODELS if not onnx_path(repo, m.name).exists()]


def build(profile: str, photoset: str | None, build_dir: Path, repo: Path, force: bool = False, seed: int = 0) -> dict:
    import torch

    from export import dataset, train
    from export.crop_graph import build_crop_model
    from export.models import Classifier, Detector, Embedder
    import onnx

    from export.onnx_export import add_label_outputs, export_torch, finish, metadata, parity, set_metadata

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    data_kw, train_kw = PROFILES[profile]
    dcfg = dataset.DataConfig(**data_kw, photoset=photoset, seed=seed)
    tcfg = train.TrainConfig(**train_kw, seed=seed)
    build_dir.mkdir(parents=True, exist_ok=True)
    heads_path = build_dir / f"heads_{profile}.pt"
    log: dict = {"profile": profile, "data": asdict(dcfg), "train": asdict(tcfg), "spec": {
        "det_size": spec.DET_SIZE, "crop_size": spec.CROP_SIZE, "k": spec.MAX_OBJECTS, "embed_dim": spec.EMBED_DIM}}
    t0 = time.time()
    if heads_path.exists() and not force:
        print(f"using trained heads from {heads_path}")
        heads = torch.load(heads_path, map_location="cpu", weights_only=False)
        log = heads["log"]
    else:
        sources = dataset.load_sources(dcfg)
        for e in sources.errors:
            print(f"skipped cutout: {e}", file=sys.stderr)
        print(f"data: {len(sources.products)} products, {len(sources.fine_classes)} fine classes, "
              f"{len(set(sources.merge.values()))} categories, {len(sources.train_backgrounds)} background photos "
              f"({'photoset ' + photoset if photoset else 'generated only'})")
        det_data, crop_data = dataset.generate(dcfg, sources)
        runner = dataset.BackboneRunner(build_dir / "backbone.onnx")
        f16, f32, _ = runner.run(det_data.images, desc="detector features")
        _, _, pooled = runner.run(crop_data.crops, batch=64, desc="crop features", outputs=("f16", "f32", "pooled"))
        log["data"]["counts"] = {"products": len(sources.products), "detector_images": int(len(det_data.images)),
                                 "crops": int(len(crop_data.crops)), "background_photos": len(sources.train_backgrounds)}
        # detector
        det = Detector()
        train_idx, val_idx = np.where(~det_data.val)[0], np.where(det_data.val)[0]
        log["detector_curve"] = train.train_detector(det.head, f16, f32, det_data.boxes, train_idx, tcfg)
        pb, ps = train.run_detector_head(det.head, f16, f32, val_idx)
        log["detector_val"] = train.detection_metrics(pb, ps, [det_data.boxes[i] for i in val_idx])
        print("detector (validation scenes):", log["detector_val"])
        # classifier
        fine = sources.fine_classes
        cls = Classifier(fine, sources.merge)
        fine_of = np.array([fine.index(sources.products[p].fine_class) for p in crop_data.product])
        tr, va = ~crop_data.val, crop_data.val
        log["classifier_curve"] = train.train_classifier(cls.head, pooled[tr], fine_of[tr], tcfg)[-1:]
        with torch.no_grad():
            pred = cls.head(torch.from_numpy(pooled[va]).float()).argmax(1).numpy()
        cats = [sources.merge[f] for f in fine]
        log["classifier_val"] = {"fine_accuracy": round(float((pred == fine_of[va]).mean()), 4),
                                 "category_accuracy": round(float(np.mean([cats[a] == cats[b] for a, b in zip(pred, fine_of[va])])), 4)}
        print("classifier (validation crops):", log["classifier_val"])
        # embedder
        emb = Embedder()
        train.pca_init(emb.proj, emb.center, pooled[tr])
        categories = sorted(set(cats))
        cat_of = np.array([categories.index(sources.products[p].category) for p in crop_data.product])

        def val_recall() -> dict:
            with torch.no_grad():
                z = emb.project(torch.from_numpy(pooled).float()).numpy()
            gal = np.where(crop_data.is_catalog)[0]
            first = {}
            for r in gal:
                first.setdefault(int(crop_data.product[r]), r)
            g = np.array(list(first.values()))
            return train.retrieval_recall(z[va], crop_data.product[va], z[g], crop_data.product[g])

        log["embedder_val_pca_baseline"] = val_recall()
        log["embedder_curve"] = train.train_embedder(emb, pooled[tr], crop_data.product[tr], crop_data.is_catalog[tr], cat_of[tr], tcfg)[-1:]
        log["embedder_val"] = val_recall()
        print("embedder (validation crops vs catalog):", log["embedder_val"], "PCA baseline:", log["embedder_val_pca_baseline"])
        heads = {"detector": det.head.state_dict(), "classifier": cls.head.state_dict(), "fine_classes": fine,
                 "merge": sources.merge, "embedder": {"proj": emb.proj.state_dict(), "center": emb.center}, "log": log}
        log["train_seconds"] = round(time.time() - t0, 1)
        torch.save(heads, heads_path)
    # export ------------------------------------------------------------------------------------
    t1 = time.time()
    repository.write(repo)
    det = Detector()
    det.head.load_state_dict(heads["detector"])
    cls = Classifier(heads["fine_classes"], heads["merge"])
    cls.head.load_state_dict(heads["classifier"])
    emb = Embedder()
    emb.proj.load_state_dict(heads["embedder"]["proj"])
    emb.center.copy_(heads["embedder"]["center"])
    rng = np.random.default_rng(seed)
    img = lambda n, s: rng.integers(0, 256, (n, 3, s, s), dtype=np.uint8)  # noqa: E731
    parity_log = {}
    with torch.no_grad():
        path = onnx_path(repo, "detector")
        m = export_torch(det, spec.DETECTOR, path, torch.from_numpy(img(1, spec.DET_SIZE)))
        finish(m, spec.DETECTOR, path, metadata(spec.DETECTOR))
        parity_log["detector"] = parity(path, lambda x: [t.numpy() for t in det(torch.from_numpy(x))], [img(1, spec.DET_SIZE), img(2, spec.DET_SIZE)])

        path = onnx_path(repo, "classifier")
        m = export_torch(cls, spec.CLASSIFIER, path, torch.from_numpy(img(2, spec.CROP_SIZE)), ["fine_idx", "category_idx", "category_score"])
        add_label_outputs(m, {"fine_class": ("fine_idx", cls.fine_classes), "category": ("category_idx", cls.categories)})
        finish(m, spec.CLASSIFIER, path, metadata(spec.CLASSIFIER, {"fine_classes": cls.fine_classes, "categories": cls.categories, "merge_map": cls.merge}))

        def cls_ref(x):
            f, c, s = cls(torch.from_numpy(x))
            return [np.array([cls.fine_classes[i] for i in f], dtype=object), np.array([cls.categories[i] for i in c], dtype=object), s.numpy()]

        parity_log["classifier"] = parity(path, cls_ref, [img(1, spec.CROP_SIZE), img(spec.NUM_ROWS, spec.CROP_SIZE)])

        path = onnx_path(repo, "embedder")
        m = export_torch(emb, spec.EMBEDDER, path, torch.from_numpy(img(2, spec.CROP_SIZE)))
        finish(m, spec.EMBEDDER, path, metadata(spec.EMBEDDER))
        parity_log["embedder"] = parity(path, lambda x: [emb(torch.from_numpy(x)).numpy()], [img(1, spec.CROP_SIZE), img(spec.NUM_ROWS, spec.CROP_SIZE)])

    crop = build_crop_model()
    set_metadata(crop, metadata(spec.CROP))
    onnx.save(crop, str(onnx_path(repo, "crop")))
    log["onnx_parity_max_abs_diff"] = parity_log
    log["export_seconds"] = round(time.time() - t1, 1)
    (build_dir / "training_log.json").write_text(json.dumps(log, indent=1, default=str))
    print(f"exported {', '.join(m.name for m in spec.ONNX_MODELS)} to {repo} (parity max |diff|: {parity_log})")
    return log


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    ap.add_argument("--photoset", help="folder with cutouts/ (RGBA products) and photos/ (backgrounds); "
                    f"default: $PHOTOSET_DIR, else {DEFAULT_PHOTOSET} if it exists")
    ap.add_argument("--no-photoset", action="store_true", help="train on generated products and backgrounds only")
    ap.add_argument("--build-dir", type=Path, default=ROOT / "data" / "build")
    ap.add_argument("--repository", type=Path, default=repository.REPOSITORY)
    ap.add_argument("--force", action="store_true", help="retrain and re-export even if models exist")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    photoset = None
    if not args.no_photoset:
        photoset = args.photoset or os.environ.get("PHOTOSET_DIR") or (str(DEFAULT_PHOTOSET) if DEFAULT_PHOTOSET.is_dir() else None)
        if photoset and not Path(photoset).is_dir():
            ap.error(f"--photoset {photoset}: not a directory")
    repository.write(args.repository)
    missing = missing_models(args.repository)
    if not missing and not args.force:
        print(f"models present in {args.repository}; nothing to build (use --force to rebuild)")
        return 0
    t = time.time()
    build(args.profile, photoset, args.build_dir, args.repository, force=args.force, seed=args.seed)
    print(f"build finished in {time.time() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
