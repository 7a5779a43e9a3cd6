"""The text of ``export.evaluate``'s report.md: a pure function of its metrics.json dictionary."""
from __future__ import annotations

import math


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}" if isinstance(v, float) else str(v)


def misses_section(misses: dict | None) -> list[str]:
    """Detector recall on held-out products by object size and background (export/eval_misses.py)."""
    if not misses:
        return []
    cols = list(next(iter(next(iter(misses.values())).values())))
    lines = ["### Detector misses by object size and background", "",
             "Recall at IoU >= 0.5 of held-out products with the valid rows (score >= threshold), with the rows "
             "client.search reports and with any of the K rows; the share of tight valid boxes (IoU >= 0.7); the "
             "bin's share of all valid-row misses. \"busy\": mean |gradient| around the object >= "
             "eval_misses.BUSY_GRADIENT. Examples of misses: misses.png.", "",
             "| split | bin | " + " | ".join(cols) + " |", "|---|---" + "|---" * len(cols) + "|"]
    for name, bins in misses.items():
        lines += [f"| {name} | {b} | " + " | ".join(_fmt(r[c]) for c in cols) + " |" for b, r in bins.items()]
    return lines + ["", "![misses](misses.png)", ""]


def false_positives_section(fp: dict | None) -> list[str]:
    """The valid rows that match no product, by background and kind (export/eval_misses.py: false_positives)."""
    if not fp:
        return []
    cols = list(next(iter(fp.values())))
    lines = ["### Detector false positives by background", "",
             "Valid rows (score >= threshold) and their precision and recall per scene background, and the rows that "
             "match no product by kind: on the background (under 0.2 of the box inside a product), part of a product "
             "(over 0.8 inside one), loose or between products. A background photo has objects of its own that nobody "
             "labelled (people, animals, buildings), so a box on one counts as false; procedural backgrounds have "
             "none, so theirs is the precision with complete labels. Examples: false_positives.png.", "",
             "| background | " + " | ".join(cols) + " |", "|---" + "|---" * len(cols) + "|"]
    lines += [f"| {name} | " + " | ".join(_fmt(r[c]) for c in cols) + " |" for name, r in fp.items()]
    return lines + ["", "![false positives](false_positives.png)", ""]


def report(m: dict) -> str:
    s = m["setup"]
    not_served = f"; detection boxes padded by {s['pad_boxes']} per side before cropping (NOT the served graph)" if s["pad_boxes"] else ""
    if s.get("flip_features"):
        not_served += "; each crop's pooled vector averaged with its mirror image's (NOT the served graph)"
    lines = ["# Retrieval evaluation (held-out products)", "",
             f"Profile `{s['profile']}`, photoset: `{s['photoset']}`, evaluation seed {s['seed']}. "
             f"{s['held_out_products']} held-out products (never in training), {s['training_products']} training products; "
             f"gallery of {s['gallery']} catalog images ({s['distractors']} distractors); {s['query_objects']} query objects in "
             f"{s['query_scenes']} scenes on {s['eval_background_photos']} held-out background photos (and procedural ones); "
             f"{s['categories']} merged categories; detector threshold {s['score_threshold']}"
             f"{not_served}. Catalog: "
             f"{s['catalog_points']} points ({'best detection + whole image' if s['catalog_whole_image'] else 'best detection'}"
             f"{' + synthetic views (' + ', '.join(s['catalog_synthetic_views']) + ')' if s.get('catalog_synthetic_views') else ''} "
             f"per image; {s['catalog_images_without_valid_detection']} images without a valid detection).", "",
             "## Headline (trained embedder, the client's category filter)", "",
             "\"detected\" boxes are the objects client.search reports (client.search.select_rows); \"valid rows only\" "
             "is what it reported before (detections above the threshold).", "",
             "| boxes | R@1 | R@5 | R@1 real photo | R@5 real photo | R@1 drawn | R@5 drawn |", "|---|---|---|---|---|---|---|"]
    for name, k in m["headline"].items():
        lines.append(f"| {name} | {_fmt(k['all']['R@1'])} | {_fmt(k['all']['R@5'])} | {_fmt(k['real photo']['R@1'])} | "
                     f"{_fmt(k['real photo']['R@5'])} | {_fmt(k['drawn']['R@1'])} | {_fmt(k['drawn']['R@5'])} |")
    cols = list(next(iter(m["objects_reported"].values())))
    lines += ["", "## Objects a photo gives (query scenes)", "",
              "| rows reported | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(_fmt(r[c]) for c in cols) + " |" for name, r in m["objects_reported"].items()]
    cols = list(next(iter(m["selection_sweep"].values())))
    lines += ["", "Row policy sweep (client.search.select_rows with other parameters; R@1 with the client's filter):", "",
              "| policy | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(_fmt(r[c]) for c in cols) + " |" for name, r in m["selection_sweep"].items()]
    lines += ["", "## Catalog views (trained embedder, the client's category filter)", "",
              "| catalog stores | points | boxes | R@1 | R@5 | R@1 real photo | R@5 real photo | R@1 drawn | R@5 drawn |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, v in m["catalog_views"].items():
        for boxes, k in v.items():
            if boxes != "points":
                lines.append(f"| {name} | {v['points']} | {boxes} | {_fmt(k['all']['R@1'])} | {_fmt(k['all']['R@5'])} | "
                             f"{_fmt(k['real photo']['R@1'])} | {_fmt(k['real photo']['R@5'])} | {_fmt(k['drawn']['R@1'])} | "
                             f"{_fmt(k['drawn']['R@5'])} |")
    if m.get("colour_weight_sweep"):
        lines += ["", f"## Colour weight (served: {m['setup'].get('colour_weight')}; 0 = the CNN part alone; the client's filter)", "",
                  "| weight | boxes | R@1 | R@5 | R@1 real photo | R@5 real photo | R@1 drawn | R@5 drawn |",
                  "|---|---|---|---|---|---|---|---|"]
        for w, v in m["colour_weight_sweep"].items():
            for boxes, k in v.items():
                lines.append(f"| {w} | {boxes} | {_fmt(k['all']['R@1'])} | {_fmt(k['all']['R@5'])} | {_fmt(k['real photo']['R@1'])} | "
                             f"{_fmt(k['real photo']['R@5'])} | {_fmt(k['drawn']['R@1'])} | {_fmt(k['drawn']['R@5'])} |")
    if m.get("rerank"):
        st = m["rerank"]["settings"]
        lines += ["", f"## Geometric re-ranking (client/rerank.py; served: the best {st['candidates']} re-scored, weight "
                  f"{st['weight']}, inlier cap {st['inlier_cap']}, {st['keypoints']} ORB keypoints at {st['side']} px; the client's filter)", "",
                  "| setting | boxes | R@1 | R@5 | R@1 real photo | R@5 real photo | R@1 drawn | R@5 drawn |",
                  "|---|---|---|---|---|---|---|---|"]
        for w, v in m["rerank"]["sweep"].items():
            for boxes, k in v.items():
                lines.append(f"| {w} | {boxes} | {_fmt(k['all']['R@1'])} | {_fmt(k['all']['R@5'])} | {_fmt(k['real photo']['R@1'])} | "
                             f"{_fmt(k['real photo']['R@5'])} | {_fmt(k['drawn']['R@1'])} | {_fmt(k['drawn']['R@5'])} |")
    lines += ["", "## Detector (query scenes)", "",
             "| AP@0.5 | recall @ threshold | precision @ threshold | objects |", "|---|---|---|---|",
             f"| {_fmt(m['detector']['ap50'])} | {_fmt(m['detector']['recall_at_threshold'])} | "
             f"{_fmt(m['detector']['precision_at_threshold'])} | {m['detector']['objects']} |", ""]
    lines += misses_section(m.get("detector_misses"))
    lines += false_positives_section(m.get("detector_false_positives"))
    lines += ["## Classifier (ground-truth crops of held-out products)", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in m["classifier"].items()]
    lines += ["", "## Retrieval", "",
              "mAP: one relevant catalog image per query, so AP = 1/rank (mean reciprocal rank). A query whose object "
              "got no reported box with IoU >= 0.5 counts as a miss at every k.", "",
              "| embedding | filter | boxes | R@1 | R@5 | R@20 | mAP | n |", "|---|---|---|---|---|---|---|---|"]
    for emb, by_filter in m["retrieval"].items():
        for filt, by_boxes in by_filter.items():
            for boxes, r in by_boxes.items():
                lines.append(f"| {emb} | {filt} | {boxes} | {_fmt(r['R@1'])} | {_fmt(r['R@5'])} | {_fmt(r['R@20'])} | {_fmt(r['mAP'])} | {r['n']} |")
    lines += ["", "Category filter threshold sweep (trained embedder): R@5 with the filter applied when the query's "
              "agreement (mean of its category_score and its share among its 5 nearest catalog images; client/category.py) "
              ">= threshold (0 = always); compare with the no-filter rows above.", "",
              "| threshold | R@1 detected | R@5 detected | R@5 ground truth | queries filtered |", "|---|---|---|---|---|"]
    for t, r in m["category_filter_sweep"].items():
        lines.append(f"| {t} | {_fmt(r['R@1 det'])} | {_fmt(r['R@5 det'])} | {_fmt(r['R@5 gt'])} | "
                     f"{_fmt(r['share of queries filtered (gt)'])} |")
    lines += ["", "## Per transform (trained embedder, no filter)", "",
              "| transform | bin | n | detected | R@1 det | R@5 det | R@1 gt | baseline R@1 det |", "|---|---|---|---|---|---|---|---|"]
    for name, bins in m["per_transform"].items():
        for b, r in bins.items():
            lines.append(f"| {name} | {b} | {r['n']} | {_fmt(r['detected'])} | {_fmt(r['R@1 det'])} | {_fmt(r['R@5 det'])} | "
                         f"{_fmt(r['R@1 gt'])} | {_fmt(r['baseline R@1 det'])} |")
    lines += ["", f"Timings: {m['timings']}", "", "![examples](examples.png)", ""]
    return "\n".join(lines)
