"""The embedder's closed-form start (export.train.learned_whitening / whitening_init) on synthetic features
with a known nuisance: what export.build runs before the embedder's training, on small inputs."""
import numpy as np
import pytest
import torch

from export import train


def _features(seed: int = 0, products: int = 60, views: int = 6, dim: int = 40):
    """Product identity lives in a weak subspace; a strong nuisance (light, background) varies every view of
    every product along a few other directions, with far more variance than identity."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    identity, nuisance = basis[:, :8], basis[:, 8:12]
    product = np.repeat(np.arange(products), views)
    x = rng.normal(size=(products, 8))[product] @ identity.T + 4.0 * rng.normal(size=(len(product), 4)) @ nuisance.T
    x += 0.1 * rng.normal(size=x.shape)
    is_catalog = np.tile([True] + [False] * (views - 1), products)
    return x.astype(np.float32), product, is_catalog


def _recall_at_1(z: np.ndarray, product: np.ndarray, is_catalog: np.ndarray) -> float:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    q, g = np.where(~is_catalog)[0], np.where(is_catalog)[0]
    return train.retrieval_recall(z[q], product[q], z[g], product[g], ks=(1,))["recall@1"]


def test_learned_whitening_removes_what_varies_within_a_product_where_pca_keeps_it():
    x, product, is_catalog = _features()
    centre, w = train.learned_whitening(x, product, is_catalog, dim=8, shrinkage=0.1)
    assert w.shape == (8, x.shape[1]) and centre.shape == (x.shape[1],)
    lw = _recall_at_1((x - centre) @ w.T, product, is_catalog)
    pca = torch.nn.Linear(x.shape[1], 8, bias=False)
    c = torch.zeros(x.shape[1])
    train.pca_init(pca, c, x)
    with torch.no_grad():
        top = pca(torch.from_numpy(x) - c).numpy()
    assert lw > 0.95, lw
    assert _recall_at_1(top, product, is_catalog) < 0.6, "the nuisance dominates the plain PCA: the test would not tell"


def test_whitening_init_picks_the_shrinkage_that_recalls_best_on_held_out_products_and_sets_the_projection():
    x, product, is_catalog = _features()
    proj, centre = torch.nn.Linear(x.shape[1], 8, bias=False), torch.zeros(x.shape[1])
    log = train.whitening_init(proj, centre, x, product, is_catalog, shrinkages=(0.1, 100.0), folds=3)
    assert set(log["fold_recall@1"]) == {"0.1", "100.0"}
    assert log["shrinkage"] == max((0.1, 100.0), key=lambda s: log["fold_recall@1"][str(s)])
    assert log["fold_recall@1"]["0.1"] > log["fold_recall@1"]["100.0"], "heavy shrinkage is PCA: the nuisance wins"
    expect_c, expect_w = train.learned_whitening(x, product, is_catalog, 8, log["shrinkage"])
    assert np.allclose(proj.weight.detach().numpy(), expect_w) and np.allclose(centre.numpy(), expect_c)


def test_learned_whitening_needs_same_product_pairs():
    x, product, _ = _features()
    with pytest.raises(ValueError, match="catalog crop"):
        train.learned_whitening(x, product, np.zeros(len(x), bool), dim=8, shrinkage=0.1)


def test_the_build_starts_the_embedder_from_learned_whitening():
    cfg = train.TrainConfig()
    assert cfg.emb_init == "whitening" and len(cfg.emb_whitening_shrinkages) > 1
