"""python -m export.demo_data OUT: a demo catalog (one product on white per image) and query photos.

OUT/catalog/<category>/<product_id>.jpg, and OUT/queries/scene_<i>.jpg with OUT/queries/truth.json
(boxes, product ids, categories and transforms per object). Query scenes use background photos held
out from training (or procedural backgrounds when no photoset is given).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from export.build import PROFILES, default_photoset
from export.dataset import DataConfig, load_sources
from export.scenes import Backgrounds, make_scene


def write_demo(out: Path, *, photoset: str | None, queries: int = 3, seed: int = 123, products_per_query: int = 3,
               per_class: int | None = None) -> dict:
    cfg = DataConfig(synthetic_per_class=per_class or PROFILES["quick"][0]["synthetic_per_class"], photoset=photoset)
    sources = load_sources(cfg)
    cat_dir = out / "catalog"
    for p in sources.products:
        d = cat_dir / p.category
        d.mkdir(parents=True, exist_ok=True)
        p.catalog_image().save(d / f"{p.product_id}.jpg", quality=92)
    rng = np.random.default_rng(seed)
    bgs = Backgrounds(sources.eval_backgrounds)
    qdir = out / "queries"
    qdir.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(queries):
        scene = make_scene(sources.products, bgs, rng, size=(800, 600), n_objects=products_per_query, scale_range=(0.25, 0.42))
        name = f"scene_{i}.jpg"
        scene.image.save(qdir / name, quality=90)
        truth[name] = {"background": scene.background, "objects": [
            {"product_id": o.product_id, "category": o.category, "fine_class": o.fine_class, "box": list(o.box), "transform": o.transform}
            for o in scene.objects]}
    (qdir / "truth.json").write_text(json.dumps(truth, indent=1))
    return {"catalog": len(sources.products), "queries": queries}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--photoset", help="folder with cutouts/ and photos/; default: $PHOTOSET_DIR, else ../shared/datasets/photoset if it exists")
    ap.add_argument("--no-photoset", action="store_true")
    ap.add_argument("--queries", type=int, default=3)
    args = ap.parse_args(argv)
    info = write_demo(args.out, photoset=None if args.no_photoset else (args.photoset or default_photoset()), queries=args.queries)
    print(f"wrote {info['catalog']} catalog images and {info['queries']} query photos under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
