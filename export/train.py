"""Training of the three heads on cached frozen-backbone features, with validation metrics."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from client import spec
from client.imaging import box_iou
from export.models import LITE0, BoxRefiner, DetectorHead, decode_topk


@dataclass
class TrainConfig:
    det_epochs: int = 40
    # heatmap heads (with their refiners) trained from seeds seed, seed + 1, ... for det_epochs each, served as their
    # mean (models.HeadEnsemble). Two heads of 13 epochs against one of 25 (the same training time), on the same cached
    # features: held-out AP@0.5 0.956 / 0.951 against 0.960 / 0.948 and 0.943 / 0.944 for one head from seed 0 or 1,
    # bench.photo_search's photos boxed 0.906 / 0.945 against 0.889 / 0.940 and 0.900 / 0.940 (docs/measurements.md, "Two detector heads").
    # With two trunks (det_backbones) one head each did as well for 15 min less of the build: the quick profile's 1
    # (docs/measurements.md, "Thirty-first round")
    det_heads: int = 1
    # the trunks the detector reads (det_heads heads and refiners on each; models.Detector): heads on another
    # backbone err differently from more heads on the same one. Lite0 + Lite2 against Lite0 alone, the same two
    # Lite0 heads: held-out precision at the threshold 0.849 -> 0.896 and 0.833 -> 0.875 at recall 0.950 -> 0.952 and
    # 0.943 -> 0.938, AP@0.5 0.956 -> 0.968 and 0.951 -> 0.956, for 1.6x the detector's time (Lite2 on the first test
    # scale only: models.SECOND_SCALE_TRUNKS); four Lite0 heads gained nothing (docs/measurements.md, "A second
    # backbone for the detector")
    det_backbones: tuple[str, ...] = (LITE0,)
    # channel dropout (dropout2d) on the cached stride-16/32 maps the detector head trains on: the frozen
    # features of a cached scene are the same every epoch, so without it the head learns which channels
    # fire on the ~120 training cutouts. 0.2 took held-out R@1 0.729 -> 0.765 (real photos 0.716 -> 0.780)
    # and AP@0.5 0.896 -> 0.921 in export.evaluate, with a second seed too; 0.1 and 0.3 gained less
    # (docs/measurements.md, "Detector feature dropout").
    det_feature_dropout: float = 0.2
    # the box refiner (models.BoxRefiner) after the heatmap head: epochs (0: no refiner), the jitter of its training
    # boxes (each edge moved by up to this share of the box's side, every epoch anew) and the minimum IoU of a
    # detector box with a true box to be a training sample. On export.evaluate's held-out products, real cutouts
    # boxed tightly (IoU >= 0.7) went 0.553 -> 0.652, end-to-end R@1 0.807 -> 0.826 (docs/measurements.md, "Box refiner")
    det_refine_epochs: int = 12
    det_refine_jitter: float = 0.15
    det_refine_min_iou: float = 0.4
    cls_epochs: int = 150
    # the embedder is learned whitening (emb_init) alone in both profiles: training it afterwards with the
    # proxy and triplet losses (60 epochs, the dropout below) gained nothing on held-out products
    # (docs/measurements.md, "Embedder: learned whitening"); set emb_epochs > 0 to fine-tune from the whitening
    emb_epochs: int = 0
    # (when emb_epochs > 0) dropout on the cached pooled vectors of the embedder's query crops (not on the catalog proxies): the same
    # idea as det_feature_dropout, for a projection trained on 245 products. 0.4 took held-out R@1 0.765 -> 0.782
    # (real photos 0.780 -> 0.799) in export.evaluate; over two seeds 0.771 -> 0.790, R@5 0.880 -> 0.898
    # (docs/measurements.md, "Embedder feature dropout").
    emb_feature_dropout: float = 0.4
    # the projection's start: "whitening" (learned_whitening, shrinkage chosen by product folds among
    # emb_whitening_shrinkages) or "pca" (the top principal directions)
    emb_init: str = "whitening"
    emb_whitening_shrinkages: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
    emb_tune_head: bool = False  # partial unfreezing: also train the backbone's last conv (see models.Embedder)
    batch: int = 32
    lr: float = 2e-3
    seed: int = 0


# --- detector -------------------------------------------------------------------------------------

def centernet_targets(boxes: list[np.ndarray], h: int, w: int) -> tuple[torch.Tensor, ...]:
    """Heatmap, size, offset and centre mask (CenterNet), plus ``box`` [n, 4, h, w]: the object's box (x1, y1, x2,
    y2 in [0, 1]) at every cell of its centre region (its Gaussian >= BOX_REGION, the object whose Gaussian is
    highest there), where the box loss supervises the size (``region`` mask)."""
    n = len(boxes)
    heat = torch.zeros(n, 1, h, w)
    size = torch.zeros(n, 2, h, w)
    offset = torch.zeros(n, 2, h, w)
    mask = torch.zeros(n, 1, h, w)
    box = torch.zeros(n, 4, h, w)
    region = torch.zeros(n, 1, h, w)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    for i, bs in enumerate(boxes):
        best = torch.zeros(h, w)
        for x1, y1, x2, y2 in bs:
            cx, cy = (x1 + x2) / 2 * w, (y1 + y2) / 2 * h
            ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
            sx, sy = max((x2 - x1) * w / 6, 0.5), max((y2 - y1) * h / 6, 0.5)
            g = torch.exp(-((xs - ix) ** 2 / (2 * sx ** 2) + (ys - iy) ** 2 / (2 * sy ** 2)))
            heat[i, 0] = torch.maximum(heat[i, 0], g)
            size[i, :, iy, ix] = torch.tensor([x2 - x1, y2 - y1])
            offset[i, :, iy, ix] = torch.tensor([cx - ix, cy - iy])
            mask[i, 0, iy, ix] = 1.0
            mine = (g >= BOX_REGION) & (g > best)
            best = torch.where(mine, g, best)
            box[i, :, mine] = torch.tensor([x1, y1, x2, y2], dtype=torch.float32)[:, None]
            region[i, 0, mine] = 1.0
    return heat, size, offset, mask, box, region


BOX_REGION = 0.5  # cells whose Gaussian reaches this share of the peak also learn the object's size


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - generalised IoU of boxes [..., 4] (x1, y1, x2, y2): scale-free, so small objects weigh as much as large."""
    ix1, iy1 = torch.maximum(pred[..., 0], target[..., 0]), torch.maximum(pred[..., 1], target[..., 1])
    ix2, iy2 = torch.minimum(pred[..., 2], target[..., 2]), torch.minimum(pred[..., 3], target[..., 3])
    inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
    area = lambda b: (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)  # noqa: E731
    union = area(pred) + area(target) - inter
    ex1, ey1 = torch.minimum(pred[..., 0], target[..., 0]), torch.minimum(pred[..., 1], target[..., 1])
    ex2, ey2 = torch.maximum(pred[..., 2], target[..., 2]), torch.maximum(pred[..., 3], target[..., 3])
    enclose = (ex2 - ex1) * (ey2 - ey1)
    iou = inter / union.clamp(min=1e-9)
    return 1 - iou + (enclose - union) / enclose.clamp(min=1e-9)


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = -(torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = -(torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * neg).sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1)


def feature_dropout(*maps: torch.Tensor | None, p: float) -> tuple[torch.Tensor | None, ...]:
    """Channel dropout on the cached backbone maps (TrainConfig.det_feature_dropout; none at p = 0; None stays None)."""
    return tuple(F.dropout2d(x, p) if p > 0 and x is not None else x for x in maps)


def cached(maps: np.ndarray | None, rows) -> torch.Tensor | None:
    """Rows of a cached map array as float32, or None when there is no such array."""
    return None if maps is None else torch.from_numpy(maps[rows]).float()


def step(opt: torch.optim.Optimizer, sched, loss: torch.Tensor) -> float:
    """One optimiser and scheduler step on ``loss``; returns its value."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def train_detector(head: DetectorHead, f16: np.ndarray, f32: np.ndarray, boxes: list[np.ndarray], train_idx: np.ndarray,
                   cfg: TrainConfig, f8: np.ndarray | None = None) -> list[dict]:
    """The heatmap head on cached maps (``f8``: the stride-8 maps, for a head that reads them)."""
    torch.manual_seed(cfg.seed)
    h, w = f16.shape[-2:]
    targets = centernet_targets(boxes, h, w)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-3)
    steps = cfg.det_epochs * math.ceil(len(train_idx) / cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(cfg.seed)
    log = []
    head.train()
    for epoch in tqdm(range(cfg.det_epochs), desc="detector", unit="epoch"):
        perm = rng.permutation(train_idx)
        total = 0.0
        for i in range(0, len(perm), cfg.batch):
            b = perm[i:i + cfg.batch]
            x16, x32, x8 = cached(f16, b), cached(f32, b), cached(f8, b)
            heat, size, offset, mask, box, region = (t[b] for t in targets)
            if rng.random() < 0.5:  # horizontal flip of the feature maps and targets
                x16, x32, heat, size, mask = x16.flip(-1), x32.flip(-1), heat.flip(-1), size.flip(-1), mask.flip(-1)
                x8 = x8.flip(-1) if x8 is not None else None
                offset = offset.flip(-1)
                offset = torch.stack([torch.where(mask[:, 0] > 0, 1 - offset[:, 0], offset[:, 0]), offset[:, 1]], 1)
                box, region = box.flip(-1), region.flip(-1)
                box = torch.stack([1 - box[:, 2], box[:, 1], 1 - box[:, 0], box[:, 3]], 1) * region
            x16, x32, x8 = feature_dropout(x16, x32, x8, p=cfg.det_feature_dropout)
            logits, psize, poff = head(x16, x32, x8)
            n_pos = mask.sum().clamp(min=1)
            # the size, at every cell of an object's centre region: the box of that size around the object's true
            # centre against its box, by GIoU (the offset is learned at the centre cell, where decoding reads it)
            centre = torch.stack([box[:, 0] + box[:, 2], box[:, 1] + box[:, 3]], 1) / 2
            pred = torch.cat([centre - psize / 2, centre + psize / 2], 1)
            sel = region[:, 0] > 0
            box_loss = giou_loss(pred.permute(0, 2, 3, 1)[sel], box.permute(0, 2, 3, 1)[sel]).mean() if sel.any() else psize.sum() * 0
            loss = focal_loss(logits, heat) + 5 * (F.l1_loss(psize * mask, size * mask, reduction="sum") / n_pos) \
                + (F.l1_loss(poff * mask, offset * mask, reduction="sum") / n_pos) + 2 * box_loss
            total += step(opt, sched, loss) * len(b)
        log.append({"epoch": epoch, "loss": total / len(perm)})
    head.eval()
    return log


def detection_metrics(pred_boxes: list[np.ndarray], pred_scores: list[np.ndarray], gt: list[np.ndarray],
                      threshold: float = spec.SCORE_THRESHOLD, iou_thr: float = 0.5) -> dict:
    """AP@0.5 (all-point interpolation) plus precision/recall at the operating threshold."""
    records, n_gt = [], sum(len(g) for g in gt)
    for pb, ps, g in zip(pred_boxes, pred_scores, gt):
        order = np.argsort(-ps)
        taken = np.zeros(len(g), bool)
        ious = box_iou(pb[order], g) if len(g) else np.zeros((len(pb), 0))
        for r, j in enumerate(order):
            hit = False
            if len(g):
                m = int(np.argmax(np.where(taken, -1, ious[r])))
                if ious[r, m] >= iou_thr and not taken[m]:
                    taken[m] = hit = True
            records.append((ps[j], hit))
    records.sort(key=lambda t: -t[0])
    tp = np.cumsum([h for _, h in records]); fp = np.cumsum([not h for _, h in records])
    recall = tp / max(n_gt, 1); precision = tp / np.maximum(tp + fp, 1)
    mprec = np.maximum.accumulate(precision[::-1])[::-1]
    ap = float(np.sum(np.diff(np.concatenate([[0], recall])) * mprec))
    at = [h for s, h in records if s >= threshold]
    return {"ap50": round(ap, 4), "recall_at_threshold": round(sum(at) / max(n_gt, 1), 4),
            "precision_at_threshold": round(sum(at) / max(len(at), 1), 4), "objects": n_gt}


def run_detector_head(head: DetectorHead, f16: np.ndarray, f32: np.ndarray, idx: np.ndarray,
                      refiner: BoxRefiner | None = None, steps: int = 1, f8: np.ndarray | None = None) -> tuple[list, list]:
    """The detector's top-K boxes and scores on cached features of images ``idx`` (refined ``steps`` times when
    ``refiner`` is given)."""
    boxes, scores = [], []
    with torch.no_grad():
        for i in range(0, len(idx), 64):
            b = idx[i:i + 64]
            x16, x32, x8 = cached(f16, b), cached(f32, b), cached(f8, b)
            bx, sc = decode_topk(*head(x16, x32, x8), spec.MAX_OBJECTS)
            for _ in range(steps if refiner is not None else 0):
                bx = refiner(x16, x32, bx, x8)
            boxes += list(bx.numpy()); scores += list(sc.numpy())
    return boxes, scores


def refiner_samples(proposals: list[np.ndarray], gt: list[np.ndarray], idx: np.ndarray, min_iou: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The refiner's training samples: (box, its true box, its image) for each detector box of image ``idx[j]``
    (``proposals[j]``) that overlaps a true box by ``min_iou`` or more, and each true box itself (jittered while
    training): the detector's real mistakes and a spread of others."""
    box, target, image = [], [], []
    for j, i in enumerate(idx):
        g = gt[i]
        if not len(g):
            continue
        iou = box_iou(proposals[j], g)
        best = iou.argmax(1)
        for r in np.where(iou.max(1) >= min_iou)[0]:
            box.append(proposals[j][r]); target.append(g[best[r]]); image.append(i)
        box += list(g); target += list(g); image += [i] * len(g)
    return np.array(box, np.float32).reshape(-1, 4), np.array(target, np.float32).reshape(-1, 4), np.array(image, np.int64)


def train_refiner(refiner: BoxRefiner, f16: np.ndarray, f32: np.ndarray, gt: list[np.ndarray], proposals: list[np.ndarray],
                  idx: np.ndarray, cfg: TrainConfig, batch: int = 256, progress: bool = True,
                  f8: np.ndarray | None = None) -> list[dict]:
    """Trains ``refiner`` on cached features: samples from ``refiner_samples``, each box's edges jittered by up to
    ``cfg.det_refine_jitter`` of its side every epoch, loss 1 - GIoU + 5 x L1 against the true box, channel
    dropout on the maps as for the head."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    box, target, image = refiner_samples(proposals, gt, idx, cfg.det_refine_min_iou)
    if not len(box):
        raise ValueError("no training boxes for the box refiner: the scenes have no objects")
    opt = torch.optim.AdamW(refiner.parameters(), lr=cfg.lr, weight_decay=1e-3)
    steps = cfg.det_refine_epochs * math.ceil(len(box) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    log = []
    refiner.train()
    for epoch in tqdm(range(cfg.det_refine_epochs), desc="box refiner", unit="epoch", disable=not progress):
        perm = rng.permutation(len(box))
        total = 0.0
        for i in range(0, len(perm), batch):
            b = perm[i:i + batch]
            side = np.concatenate([box[b, 2:] - box[b, :2]] * 2, 1)
            moved = np.clip(box[b] + rng.uniform(-1, 1, (len(b), 4)).astype(np.float32) * cfg.det_refine_jitter * side, 0, 1)
            moved = np.concatenate([np.minimum(moved[:, :2], moved[:, 2:]), np.maximum(moved[:, :2], moved[:, 2:])], 1)
            rows = image[b]
            x16, x32, x8 = feature_dropout(cached(f16, rows), cached(f32, rows), cached(f8, rows), p=cfg.det_feature_dropout)
            out = refiner(x16, x32, torch.from_numpy(moved)[:, None], x8)[:, 0]
            t = torch.from_numpy(target[b])
            loss = giou_loss(out, t).mean() + 5 * F.l1_loss(out, t)
            total += step(opt, sched, loss) * len(b)
        log.append({"epoch": epoch, "loss": total / len(perm)})
    refiner.eval()
    return log


# --- classifier -----------------------------------------------------------------------------------

def train_classifier(head: torch.nn.Module, feats: np.ndarray, labels: np.ndarray, cfg: TrainConfig,
                     progress: bool = True) -> list[dict]:
    torch.manual_seed(cfg.seed)
    x, y = torch.from_numpy(feats).float(), torch.from_numpy(labels).long()
    counts = torch.bincount(y, minlength=head[-1].out_features).float().clamp(min=1)
    # square-root inverse frequency: full inverse-frequency weights made the probe pick rare one-product
    # classes for new products (unseen-product category accuracy 0.37 vs 0.71 with sqrt weights)
    weight = (counts.sum() / counts).sqrt()
    weight = weight / weight.mean()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-3)
    log = []
    head.train()
    for epoch in tqdm(range(cfg.cls_epochs), desc="classifier", unit="epoch", disable=not progress):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 256):
            b = perm[i:i + 256]
            loss = F.cross_entropy(head(x[b]), y[b], weight=weight, label_smoothing=0.1)
            opt.zero_grad(); loss.backward(); opt.step()
        log.append({"epoch": epoch, "loss": loss.item()})
    head.eval()
    return log


# --- embedder -------------------------------------------------------------------------------------

def learned_whitening(feats: np.ndarray, product: np.ndarray, is_catalog: np.ndarray, dim: int,
                      shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form learned whitening (Radenovic et al., "Fine-tuning CNN image retrieval with no human
    annotation", Lw): whiten by the covariance of same-product differences (each query crop minus its
    product's first two catalog crops), shrunk towards its mean eigenvalue by ``shrinkage``, then keep the
    ``dim`` directions of largest variance of all crops in that space. Returns (centre [D], W [dim, D]):
    x -> W (x - centre), L2-normalised, is the CNN part of the embedding; the graph is the PCA projection's."""
    x = feats.astype(np.float64)
    centre = x.mean(0)
    first: dict[int, list[int]] = {}
    for r in np.where(is_catalog)[0]:
        first.setdefault(int(product[r]), []).append(int(r))
    pairs = np.array([(q, c) for q in np.where(~is_catalog)[0] for c in first.get(int(product[q]), [])[:2]])
    if len(pairs) == 0:
        raise ValueError("learned whitening needs query crops of products with a catalog crop")
    diff = x[pairs[:, 0]] - x[pairs[:, 1]]
    within = diff.T @ diff / len(diff)
    within += shrinkage * np.trace(within) / len(within) * np.eye(len(within))
    ev, vec = np.linalg.eigh(within)
    whiten = vec @ np.diag(ev ** -0.5) @ vec.T
    xc = x - centre
    spread = whiten @ (xc.T @ xc / len(xc)) @ whiten.T
    ev2, vec2 = np.linalg.eigh(spread)
    top = vec2[:, np.argsort(-ev2)[:dim]]
    return centre.astype(np.float32), (whiten.T @ top).T.astype(np.float32)


def whitening_init(proj: torch.nn.Linear, center: torch.Tensor, feats: np.ndarray, product: np.ndarray,
                   is_catalog: np.ndarray, shrinkages: tuple[float, ...], folds: int = 5, seed: int = 0) -> dict:
    """Sets ``proj`` and ``center`` to the learned whitening of ``feats`` whose shrinkage recalls best on
    products it was not fitted on (``folds``-fold by product: each fold's query crops against one catalog crop
    per product of the fold). Returns the fold R@1 of every shrinkage and the one chosen."""
    products = np.unique(product)
    fold_of = dict(zip(products.tolist(), np.random.default_rng(seed).permutation(len(products)) % folds))
    fold = np.array([fold_of[int(p)] for p in product])
    recall = {}
    for lam in shrinkages:
        hits = []
        for k in range(folds):
            fit, held = fold != k, fold == k
            centre, w = learned_whitening(feats[fit], product[fit], is_catalog[fit], proj.out_features, lam)
            g = np.where(held & is_catalog)[0]
            g = g[np.unique(product[g], return_index=True)[1]]
            q = np.where(held & ~is_catalog)[0]
            q = q[np.isin(product[q], product[g])]
            zq, zg = ((feats[rows] - centre) @ w.T for rows in (q, g))
            zq, zg = (z / np.linalg.norm(z, axis=1, keepdims=True) for z in (zq, zg))
            hits.append(retrieval_recall(zq, product[q], zg, product[g], ks=(1,))["recall@1"])
        recall[str(lam)] = round(float(np.mean(hits)), 4)
    best = max(shrinkages, key=lambda lam: recall[str(lam)])
    centre, w = learned_whitening(feats, product, is_catalog, proj.out_features, best)
    with torch.no_grad():
        center.copy_(torch.from_numpy(centre))
        proj.weight.copy_(torch.from_numpy(w))
    return {"fold_recall@1": recall, "shrinkage": best}


def pca_init(proj: torch.nn.Linear, center: torch.Tensor, feats: np.ndarray) -> None:
    x = torch.from_numpy(feats).float()
    mu = x.mean(0)
    _, _, v = torch.linalg.svd(x - mu, full_matrices=False)
    with torch.no_grad():
        center.copy_(mu)
        proj.weight.copy_(v[: proj.out_features])


def batch_hard_triplet(emb: torch.Tensor, labels: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    d = 1 - emb @ emb.T
    same = labels[:, None] == labels[None, :]
    pos = torch.where(same, d, torch.full_like(d, -1)).max(1).values
    neg = torch.where(same, torch.full_like(d, 9), d).min(1).values
    return F.relu(pos - neg + margin).mean()


def train_embedder(embedder, feats: np.ndarray, product: np.ndarray, is_catalog: np.ndarray, category: np.ndarray,
                   cfg: TrainConfig, temperature: float = 0.05) -> list[dict]:
    """Scene crops are pulled to their product's catalog crop and pushed from other catalog crops
    (softmax over catalog embeddings, a proxy loss whose proxies are the catalog images) plus a
    batch-hard triplet loss over P x K batches drawn within categories."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    x = torch.from_numpy(feats).float()
    cat_rows = np.where(is_catalog)[0]
    canon = {}
    for r in cat_rows:
        canon.setdefault(int(product[r]), r)  # first catalog view = canonical catalog crop
    prod_ids = np.array(sorted(canon))
    col = {p: i for i, p in enumerate(prod_ids)}
    queries = np.where(~is_catalog)[0]
    groups = [{"params": embedder.proj.parameters(), "lr": 5e-4}]
    if embedder.tuned_head is not None:
        groups.append({"params": embedder.tuned_head.parameters(), "lr": 1e-4})
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    by_cat: dict[int, np.ndarray] = {int(c): np.unique(product[category == c]) for c in np.unique(category)}

    def drop(rows: torch.Tensor) -> torch.Tensor:  # emb_feature_dropout, on query crops only
        return F.dropout(rows, cfg.emb_feature_dropout) if cfg.emb_feature_dropout else rows

    log = []
    for epoch in tqdm(range(cfg.emb_epochs), desc="embedder", unit="epoch"):
        perm = rng.permutation(queries)
        for i in range(0, len(perm), 128):
            q = perm[i:i + 128]
            gallery = embedder.embed_features(x[[canon[p] for p in prod_ids]])
            eq = embedder.embed_features(drop(x[q]))
            target = torch.tensor([col[int(p)] for p in product[q]])
            loss = F.cross_entropy(eq @ gallery.T / temperature, target)
            # P x K batch within one or two categories: hard negatives of the same category
            c = int(rng.choice(list(by_cat)))
            ps = rng.choice(by_cat[c], size=min(16, len(by_cat[c])), replace=False)
            rows = np.concatenate([rng.choice(np.where(product == p)[0], size=4) for p in ps])
            loss = loss + batch_hard_triplet(embedder.embed_features(drop(x[rows])), torch.from_numpy(product[rows]))
            opt.zero_grad(); loss.backward(); opt.step()
        log.append({"epoch": epoch, "loss": loss.item()})
    return log


def retrieval_recall(query: np.ndarray, query_product: np.ndarray, gallery: np.ndarray, gallery_product: np.ndarray,
                     ks=(1, 5)) -> dict:
    sims = query @ gallery.T
    order = np.argsort(-sims, axis=1)
    ranked = gallery_product[order]
    return {f"recall@{k}": round(float(np.mean([(r[:k] == p).any() for r, p in zip(ranked, query_product)])), 4) for k in ks}
