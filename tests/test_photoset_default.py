"""Every command that draws from the photoset takes the same default: --photoset, else $PHOTOSET_DIR, else
../shared/datasets/photoset if it exists (export/build.py: default_photoset). The demo's data used to skip
$PHOTOSET_DIR: a checkout whose photoset lives elsewhere built on real photos and drew its demo on procedural ones."""
from __future__ import annotations

from export import build, demo_data


def test_photoset_dir_wins_over_the_shared_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("PHOTOSET_DIR", str(tmp_path))
    assert build.default_photoset() == str(tmp_path)
    monkeypatch.delenv("PHOTOSET_DIR")
    monkeypatch.setattr(build, "DEFAULT_PHOTOSET", tmp_path / "missing")
    assert build.default_photoset() is None
    monkeypatch.setattr(build, "DEFAULT_PHOTOSET", tmp_path)
    assert build.default_photoset() == str(tmp_path)


def test_the_demo_data_takes_the_builds_photoset(monkeypatch, tmp_path):
    got = []
    monkeypatch.setattr(demo_data, "write_demo", lambda out, *, photoset, queries: got.append(photoset) or
                        {"catalog": 0, "queries": 0})
    env, flag = tmp_path / "env", tmp_path / "flag"
    monkeypatch.setenv("PHOTOSET_DIR", str(env))
    demo_data.main([str(tmp_path / "out")])
    demo_data.main([str(tmp_path / "out"), "--photoset", str(flag)])
    demo_data.main([str(tmp_path / "out"), "--no-photoset"])
    assert got == [str(env), str(flag), None]
