"""python -m export.build [--profile quick|full]: trains what is missing, exports ONNX, writes model_repository/.

quick: CPU, a few minutes (the demo and the tests use it). full: more data and epochs (hours on CPU,
minutes on a GPU). Heads train on cached frozen-backbone features; everything is seeded.
"""
from __future__ import annotations

import argparse
import hashlib
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
    "quick": ({"synthetic_per_class": 20, "scenes": 3000, "catalog_views": 300},
              {"det_epochs": 25, "cls_epochs": 150, "emb_epochs": 60}),
    "full": ({"synthetic_per_class": 30, "scenes": 8000, "catalog_views": 1500},
             {"det_epochs": 80, "cls_epochs": 300, "emb_epochs": 120}),
}


def missing_models(repo: Path) -> list[str]:
    return [m.name for m in spec.ONNX_MODELS if not spec.onnx_file(repo, m.name).exists()]


DATA_VERSION = 2  # bump when scene generation changes, so cached features are not reused


def features(dcfg, sources, build_dir: Path):
    """Generated data and its frozen-backbone features, cached in build_dir by a key of everything that
    decides them (config, product ids, background names, DATA_VERSION): a retrain with other head or
    loss settings, or a build that was interrupted after this stage, starts from the cache."""
    from export import dataset

    key = hashlib.sha256(json.dumps({"data": asdict(dcfg), "products": [p.product_id for p in sources.products],
                                     "backgrounds": [p.name for p in sources.train_backgrounds], "version": DATA_VERSION},
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = build_dir / f"features_{key}.npz"
    if path.exists():
        print(f"using cached data and features {path}")
        z = np.load(path)
        splits = np.cumsum(z["box_counts"])[:-1]
        det = dataset.DetectorData(None, np.split(z["boxes"], splits), z["det_val"])
        crops = dataset.CropData(None, z["product"], z["is_catalog"], z["crop_val"])
        return det, crops, z["f16"], z["f32"], z["c32"], z["pooled"]
    det, crops = dataset.generate(dcfg, sources)
    runner = dataset.BackboneRunner(build_dir / "backbone.onnx")
    f16, f32, _ = runner.run(det.images, desc="detector features")
    c32, pooled = runner.run(crops.crops, batch=64, desc="crop features", outputs=("f32", "pooled"))
    for old in build_dir.glob("features_*.npz"):
        old.unlink()
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, boxes=np.concatenate(det.boxes).reshape(-1, 4), box_counts=np.array([len(b) for b in det.boxes]),
             det_val=det.val, product=crops.product, is_catalog=crops.is_catalog, crop_val=crops.val,
             f16=f16, f32=f32, c32=c32, pooled=pooled)
    tmp.replace(path)
    return det, crops, f16, f32, c32, pooled


STAGES = tuple(m.name for m in spec.TRAINED_MODELS)


def build(profile: str, photoset: str | None, build_dir: Path, repo: Path, force: bool = False, seed: int = 0,
          retrain: tuple[str, ...] = ()) -> dict:
    """``retrain``: only these heads are trained again (the others come from the last build of this
    profile, and their ONNX files are left as they are)."""
    import torch

    from export import dataset, merge, train
    from export.crop_graph import build_crop_model
    from export.models import Classifier, Detector, Embedder
    import onnx

    from export.onnx_export import add_label_outputs, export_torch, finish, metadata, parity, set_metadata

    torch.manual_seed(seed)
    torch.set_num_threads(int(os.environ.get("TORCH_NUM_THREADS", os.cpu_count() or 1)))
    data_kw, train_kw = PROFILES[profile]
    dcfg = dataset.DataConfig(**data_kw, photoset=photoset, seed=seed)
    tcfg = train.TrainConfig(**train_kw, seed=seed)
    build_dir.mkdir(parents=True, exist_ok=True)
    heads_path = build_dir / f"heads_{profile}.pt"
    log: dict = {"profile": profile, "data": asdict(dcfg), "train": asdict(tcfg), "spec": {
        "det_size": spec.DET_SIZE, "crop_size": spec.CROP_SIZE, "k": spec.MAX_OBJECTS, "embed_dim": spec.EMBED_DIM}}
    t0 = time.time()
    old = None
    if retrain:
        if not heads_path.exists():
            raise SystemExit(f"error: --retrain needs a previous build ({heads_path} is missing)")
        old = torch.load(heads_path, map_location="cpu", weights_only=False)
        force = True
    if heads_path.exists() and not force:
        print(f"using trained heads from {heads_path}")
        heads = torch.load(heads_path, map_location="cpu", weights_only=False)
        log = heads["log"]
    else:
        sources = dataset.load_sources(dcfg)
        for e in sources.errors:
            print(f"skipped cutout: {e}", file=sys.stderr)
        print(f"data: {len(sources.products)} training products ({len(sources.held_out)} held out for export.evaluate), {len(sources.fine_classes)} fine classes, "
              f"{len(set(sources.merge.values()))} categories, {len(sources.train_backgrounds)} background photos "
              f"({'photoset ' + photoset if photoset else 'generated only'})")
        det_data, crop_data, f16, f32, c32, pooled = features(dcfg, sources, build_dir)
        log["data"]["counts"] = {"products": len(sources.products), "detector_images": int(len(det_data.val)),
                                 "crops": int(len(crop_data.product)), "background_photos": len(sources.train_backgrounds),
                                 "held_out_products": len(sources.held_out), "held_out_backgrounds": len(sources.eval_backgrounds)}
        # detector
        det = Detector()
        train_idx, val_idx = np.where(~det_data.val)[0], np.where(det_data.val)[0]
        if old and "detector" not in retrain:
            det.head.load_state_dict(old["detector"])
            det.head.eval()
            log["detector_curve"] = old["log"].get("detector_curve")
        else:
            log["detector_curve"] = train.train_detector(det.head, f16, f32, det_data.boxes, train_idx, tcfg)
        pb, ps = train.run_detector_head(det.head, f16, f32, val_idx)
        log["detector_val"] = train.detection_metrics(pb, ps, [det_data.boxes[i] for i in val_idx])
        print("detector (validation scenes):", log["detector_val"])
        # classifier: the confusion matrix comes from 5 folds over training products (each fold's
        # products unseen by its probe), so it measures how classes generalise to NEW products; the
        # classes it confuses are merged; then the classifier is fitted on every training product
        fine = sources.fine_classes
        fine_of = np.array([fine.index(sources.products[p].fine_class) for p in crop_data.product])
        tr, va = ~crop_data.val, crop_data.val
        fold = np.array([merge.fold_of(sources.products[p].product_id) for p in crop_data.product])
        conf = np.zeros((len(fine), len(fine)), np.int64)
        probe_correct = []
        for k in range(merge.FOLDS if not old or "classifier" in retrain else 0):
            probe = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(pooled.shape[1], len(fine)))
            train.train_classifier(probe, pooled[tr & (fold != k)], fine_of[tr & (fold != k)], tcfg, progress=False)
            held = (fold == k) & ~crop_data.is_catalog
            probe.eval()
            with torch.no_grad():
                pred = probe(torch.from_numpy(pooled[held]).float()).argmax(1).numpy()
            conf += merge.confusion(fine_of[held], pred, len(fine))
            probe_correct.append(pred == fine_of[held])
        if probe_correct:
            held = ~crop_data.is_catalog
            merge_map, steps = merge.merge_by_confusion(fine, conf)
            log["category_merge"] = {"folds": merge.FOLDS, "crops": int(held.sum()),
                                     "unseen_product_fine_accuracy": round(float(np.concatenate(probe_correct).mean()), 4),
                                     "steps": steps, "merge_map": merge_map, "confusion": conf.tolist()}
            print(f"categories: {len(fine)} fine classes merged into {len(set(merge_map.values()))} by the confusion "
                  f"matrix of {int(held.sum())} crops of products unseen by their probe ({steps[-1]})")
        if old and "classifier" not in retrain:
            fine, merge_map = old["fine_classes"], old["merge"]
            cls = Classifier(fine, merge_map)
            cls.head.load_state_dict(old["classifier"])
            log["category_merge"] = old["log"].get("category_merge")
        else:
            cls = Classifier(fine, merge_map)
            log["classifier_curve"] = train.train_classifier(cls.head, pooled[tr], fine_of[tr], tcfg)[-1:]
        with torch.no_grad():
            pred = cls.head(torch.from_numpy(pooled[va]).float()).argmax(1).numpy()
        log["classifier_val"] = {"fine_accuracy": round(float((pred == fine_of[va]).mean()), 4),
                                 "category_accuracy": round(float(np.mean([merge_map[fine[a]] == merge_map[fine[b]]
                                                                           for a, b in zip(pred, fine_of[va])])), 4)}
        print("classifier (validation crops):", log["classifier_val"])
        cats = [merge_map[f] for f in fine]
        # embedder
        emb = Embedder(tune_head=tcfg.emb_tune_head)
        emb_feats = c32 if tcfg.emb_tune_head else pooled
        train.pca_init(emb.proj, emb.center, pooled[tr])
        categories = sorted(set(cats))
        cat_of = np.array([categories.index(merge_map[sources.products[p].fine_class]) for p in crop_data.product])

        def val_recall() -> dict:
            with torch.no_grad():
                z = torch.cat([emb.embed_features(torch.from_numpy(emb_feats[i:i + 512]).float())
                               for i in range(0, len(emb_feats), 512)]).numpy()
            gal = np.where(crop_data.is_catalog)[0]
            first = {}
            for r in gal:
                first.setdefault(int(crop_data.product[r]), r)
            g = np.array(list(first.values()))
            return train.retrieval_recall(z[va], crop_data.product[va], z[g], crop_data.product[g])

        log["embedder_val_pca_baseline"] = val_recall()
        if old and "embedder" not in retrain:
            emb = Embedder(tune_head=old["embedder"].get("tuned_head") is not None)
            emb_feats = c32 if emb.tuned_head is not None else pooled
            if emb.tuned_head is not None:
                emb.tuned_head.load_state_dict(old["embedder"]["tuned_head"])
            emb.proj.load_state_dict(old["embedder"]["proj"])
            emb.center.copy_(old["embedder"]["center"])
            log["embedder_curve"] = old["log"].get("embedder_curve")
        else:
            log["embedder_curve"] = train.train_embedder(emb, emb_feats[tr], crop_data.product[tr], crop_data.is_catalog[tr], cat_of[tr], tcfg)[-1:]
        log["embedder_val"] = val_recall()
        print("embedder (validation crops vs catalog):", log["embedder_val"], "PCA baseline:", log["embedder_val_pca_baseline"])
        heads = {"detector": det.head.state_dict(), "classifier": cls.head.state_dict(), "fine_classes": fine,
                 "merge": merge_map, "embedder": {"proj": emb.proj.state_dict(), "center": emb.center,
                              "tuned_head": emb.tuned_head.state_dict() if emb.tuned_head is not None else None}, "log": log}
        log["train_seconds"] = round(time.time() - t0, 1)
        torch.save(heads, heads_path)
    # export ------------------------------------------------------------------------------------
    t1 = time.time()
    repository.write(repo)
    det = Detector()
    det.head.load_state_dict(heads["detector"])
    det.eval()
    cls = Classifier(heads["fine_classes"], heads["merge"])
    cls.head.load_state_dict(heads["classifier"])
    emb = Embedder(tune_head=heads["embedder"].get("tuned_head") is not None)
    if emb.tuned_head is not None:
        emb.tuned_head.load_state_dict(heads["embedder"]["tuned_head"])
    emb.proj.load_state_dict(heads["embedder"]["proj"])
    emb.center.copy_(heads["embedder"]["center"])
    rng = np.random.default_rng(seed)
    img = lambda n, s: rng.integers(0, 256, (n, 3, s, s), dtype=np.uint8)  # noqa: E731
    parity_log = {}
    todo = set(retrain or STAGES) | {m for m in STAGES if not spec.onnx_file(repo, m).exists()}
    with torch.no_grad():
        if "detector" in todo:
            path = spec.onnx_file(repo, "detector")
            m = export_torch(det, spec.DETECTOR, path, torch.from_numpy(img(1, spec.DET_SIZE)))
            finish(m, spec.DETECTOR, path, metadata(spec.DETECTOR))
            parity_log["detector"] = parity(path, lambda x: [t.numpy() for t in det(torch.from_numpy(x))], [img(1, spec.DET_SIZE), img(2, spec.DET_SIZE)])

        if "classifier" in todo:
            path = spec.onnx_file(repo, "classifier")
            m = export_torch(cls, spec.CLASSIFIER, path, torch.from_numpy(img(2, spec.CROP_SIZE)), ["fine_idx", "category_idx", "category_score"])
            add_label_outputs(m, {"fine_class": ("fine_idx", cls.fine_classes), "category": ("category_idx", cls.categories)})
            finish(m, spec.CLASSIFIER, path, metadata(spec.CLASSIFIER, {"fine_classes": cls.fine_classes, "categories": cls.categories, "merge_map": cls.merge}))

            def cls_ref(x):
                f, c, s = cls(torch.from_numpy(x))
                return [np.array([cls.fine_classes[i] for i in f], dtype=object), np.array([cls.categories[i] for i in c], dtype=object), s.numpy()]

            parity_log["classifier"] = parity(path, cls_ref, [img(1, spec.CROP_SIZE), img(spec.NUM_ROWS, spec.CROP_SIZE)])

        if "embedder" in todo:
            path = spec.onnx_file(repo, "embedder")
            m = export_torch(emb, spec.EMBEDDER, path, torch.from_numpy(img(2, spec.CROP_SIZE)))
            finish(m, spec.EMBEDDER, path, metadata(spec.EMBEDDER))
            parity_log["embedder"] = parity(path, lambda x: [emb(torch.from_numpy(x)).numpy()], [img(1, spec.CROP_SIZE), img(spec.NUM_ROWS, spec.CROP_SIZE)])

    crop = build_crop_model()
    set_metadata(crop, metadata(spec.CROP))
    onnx.save(crop, str(spec.onnx_file(repo, "crop")))
    log["onnx_parity_max_abs_diff"] = parity_log
    log["export_seconds"] = round(time.time() - t1, 1)
    text = json.dumps(log, indent=1, default=str)
    (build_dir / "training_log.json").write_text(text)
    (repo / "training_log.json").write_text(text)  # next to the exported models: data, config, metrics
    print(f"exported {', '.join(sorted(todo))} and crop to {repo} (parity max |diff|: {parity_log})")
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
    ap.add_argument("--retrain", default="", help=f"comma-separated heads to retrain from the cached data ({','.join(STAGES)}); "
                    "the others and their ONNX files are kept")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    photoset = None
    if not args.no_photoset:
        photoset = args.photoset or os.environ.get("PHOTOSET_DIR") or (str(DEFAULT_PHOTOSET) if DEFAULT_PHOTOSET.is_dir() else None)
        if photoset and not Path(photoset).is_dir():
            ap.error(f"--photoset {photoset}: not a directory")
    repository.write(args.repository)
    missing = missing_models(args.repository)
    retrain = tuple(x for x in args.retrain.split(",") if x)
    if set(retrain) - set(STAGES):
        ap.error(f"--retrain: unknown heads {sorted(set(retrain) - set(STAGES))}; known: {','.join(STAGES)}")
    if not missing and not args.force and not retrain:
        print(f"models present in {args.repository}; nothing to build (use --force to rebuild)")
        return 0
    t = time.time()
    build(args.profile, photoset, args.build_dir, args.repository, force=args.force, seed=args.seed, retrain=retrain)
    print(f"build finished in {time.time() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
