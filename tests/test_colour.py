"""The colour part of the embedding (export.models.ColourHistogram) and how the embedder fuses it."""
from __future__ import annotations

import numpy as np
import pytest

from client import spec

torch = pytest.importorskip("torch")


def _plain(rgb, size=spec.CROP_SIZE):
    return torch.tensor(rgb, dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, size, size).contiguous()


@pytest.fixture(scope="module")
def hist():
    from export.models import ColourHistogram

    return ColourHistogram().eval()


def test_histogram_is_a_unit_vector_of_the_spec_size(hist):
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 3, spec.CROP_SIZE, spec.CROP_SIZE), dtype=np.uint8))
    h = hist(x)
    assert h.shape == (5, spec.COLOUR_DIM) and hist.dim == spec.COLOUR_DIM
    assert bool((h >= 0).all())
    np.testing.assert_allclose(h.norm(dim=1).numpy(), 1.0, atol=1e-5)


def test_colours_apart_and_light_changes_close(hist):
    red, blue, white = hist(_plain((200, 30, 30))), hist(_plain((30, 40, 200))), hist(_plain((250, 250, 250)))
    darker_red, orange_red = hist(_plain((150, 25, 25))), hist(_plain((200, 60, 30)))
    sim = lambda a, b: float((a * b).sum())  # noqa: E731 - the Bhattacharyya coefficient
    assert sim(red, blue) < 0.05 and sim(red, white) < 0.05 and sim(blue, white) < 0.05
    assert sim(red, darker_red) > 0.7  # the same red in dimmer light
    assert sim(red, orange_red) > 0.7  # a small hue shift moves mass to the neighbouring bin, softly
    assert sim(red, orange_red) > sim(red, blue) + 0.6


def test_the_centre_counts_more_than_the_border(hist):
    x = _plain((240, 240, 240)).clone()  # a red product on a white catalog background ...
    q = spec.CROP_SIZE // 4
    x[:, :, q:-q, q:-q] = torch.tensor([200, 30, 30], dtype=torch.uint8).view(1, 3, 1, 1)
    y = _plain((30, 120, 40)).clone()  # ... and on green grass, cropped a little loosely
    y[:, :, q:-q, q:-q] = torch.tensor([200, 30, 30], dtype=torch.uint8).view(1, 3, 1, 1)
    assert float((hist(x) * hist(y)).sum()) > 0.8
    assert float((hist(x) * hist(_plain((30, 120, 40)))).sum()) < 0.1


def test_fused_dot_product_is_the_weighted_sum_of_shape_and_colour():
    from export.models import Embedder

    emb = Embedder(pretrained=False).eval()
    crops = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, spec.CROP_SIZE, spec.CROP_SIZE), dtype=np.uint8))
    with torch.no_grad():
        e = emb(crops)
        cnn = emb.embed_features(emb.backbone.pooled(crops))
        col = emb.colour(crops)
    assert e.shape == (4, spec.EMBED_DIM) == (4, spec.CNN_EMBED_DIM + spec.COLOUR_DIM)
    np.testing.assert_allclose(e.norm(dim=1).numpy(), 1.0, atol=1e-5)
    w = spec.COLOUR_WEIGHT
    np.testing.assert_allclose((e @ e.T).numpy(), ((1 - w) * cnn @ cnn.T + w * col @ col.T).numpy(), atol=1e-5)
    # the parts come back from the served vector (export.evaluate's colour weight sweep relies on it)
    np.testing.assert_allclose(e[:, :spec.CNN_EMBED_DIM].numpy() / np.sqrt(1 - w), cnn.numpy(), atol=1e-5)
