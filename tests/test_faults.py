"""Faults on the real stack: tritonserver killed and restarted during ``python -m client.index``, the index
process itself killed and started again, a store that is locked or unreachable, a catalog built with
another embedder. Every run must end with exactly the points of an undisturbed run: no loss, no
duplicates, nothing half-written."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from client import spec
from client.catalog import CATALOG_VIEWS, index_folder
from client.store import CatalogPoint, QdrantStore
from client.triton import RetrievalClient, ServerUnavailable, backoff_delays, retryable
from deploy.local import LocalTriton, _alive, free_port, stub_instances

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration
N_IMAGES = 48


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Polls ``condition`` until it returns something true; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)  # polling interval, not a wait for an assumed duration
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def successes(metrics_port: int) -> int:
    """Requests the two object ensembles answered (``retrieval`` for searches, ``retrieval_catalog`` for the
    index), from Triton's Prometheus metrics."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    except OSError:
        return -1
    counts = [re.search(rf'^nv_inference_request_success\{{model="{m}",version="1"\}} (\d+)', text, re.M)
              for m in (spec.ENSEMBLE, spec.CATALOG_ENSEMBLE)]
    return sum(int(m.group(1)) for m in counts if m)


def stored(path: Path) -> dict[str, tuple]:
    """point id -> (product, view path, object, sha256) of the live collection at ``path``."""
    with QdrantStore(path=path) as s:
        return {r.id: (r.payload["product_id"], r.payload["path"], r.payload["object"], r.payload["sha256"])
                for r in s.engine.scroll(s.collection)}


def index_cmd(folder: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "client.index", str(folder), "--batch", "4", *extra]


def env_for(grpc_url: str, store: Path) -> dict[str, str]:
    env = dict(os.environ, TRITON_URL=grpc_url, QDRANT_PATH=str(store))
    env.pop("QDRANT_URL", None)
    return env


@pytest.fixture(scope="module")
def catalog(demo, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faults") / "catalog"
    for src in sorted((demo / "catalog").rglob("*.jpg"))[:N_IMAGES]:
        dst = folder / src.relative_to(demo / "catalog")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return folder


@pytest.fixture(scope="module")
def expected(client, catalog, tmp_path_factory) -> dict[str, tuple]:
    """The points of an undisturbed run."""
    path = tmp_path_factory.mktemp("faults_reference") / "q"
    with QdrantStore(path=path) as store:
        report = index_folder(catalog, client, store)
    assert report.indexed == N_IMAGES and not report.skipped
    points = stored(path)
    views = len(CATALOG_VIEWS)  # client.catalog.points_for: best detection (+ whole image), synthetic views
    assert N_IMAGES * (1 + views) <= len(points) <= N_IMAGES * (2 + views)
    return points


def test_backoff_grows_to_its_cap_with_full_jitter():
    import random

    delays = backoff_delays(first=0.1, cap=2.0, rng=random.Random(1))
    got = [next(delays) for _ in range(12)]
    envelopes = [min(2.0, 0.1 * 2 ** k) for k in range(12)]
    assert all(0 <= d <= e for d, e in zip(got, envelopes))
    assert len({round(d, 6) for d in got}) == 12 and max(got[6:]) > 0.5  # jittered, and grown


def test_which_failures_are_retried():
    assert retryable("StatusCode.UNAVAILABLE", "failed to connect to all addresses")
    assert retryable("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded")
    assert retryable("StatusCode.INTERNAL", "Stub process 'detector_0_1' is not healthy.")
    assert not retryable("StatusCode.INTERNAL", "onnxruntime: shape mismatch")  # a model error is not outlived by waiting
    assert not retryable("StatusCode.INVALID_ARGUMENT", "Stub process 'x' is not healthy.")
    # a server unloading its models on the way down (met in CI right after a stalled stub): a restart answers
    assert retryable("StatusCode.NOT_FOUND", "Request for unknown model: 'retrieval' has no available versions")
    assert not retryable("StatusCode.NOT_FOUND", "Request for unknown model: 'retrival' is not found")  # a typo stays an error


def test_triton_killed_and_restarted_during_index(built, catalog, expected, tmp_path):
    server = LocalTriton(tmp_path / "triton", built)
    ports = dict(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    st = server.up(**ports, timeout=240)
    try:
        store = tmp_path / "q"
        proc = subprocess.Popen(index_cmd(catalog, "--concurrency", "2", "--retry-seconds", "240"), env=env_for(st.grpc_url, store),
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: successes(st.metrics_port) >= 10 or proc.poll() is not None, 240, "10 answered requests")
        assert proc.poll() is None, "the index finished before the server could be killed"
        with RetrievalClient(st.grpc_url, retry_seconds=2.0) as probe:  # connected while the server runs
            os.killpg(st.pid, signal.SIGKILL)
            wait_for(lambda: successes(st.metrics_port) < 0, 30, "the killed server to stop answering")
            t = time.monotonic()
            with pytest.raises(ServerUnavailable, match=r"did not answer <embedder probe> \(\d+ attempt\(s\) in \d+ s, the last: failed to connect"):
                probe.embedder_id()
            assert time.monotonic() - t < 2.0 + probe.timeout  # bounded: retry_seconds + one request
            assert probe.retries >= 1
        killed_at = proc.poll()
        st = server.up(**ports, timeout=240)  # the same ports, a new process
        out, err = proc.communicate(timeout=600)
    finally:
        server.down()
    assert killed_at is None, "the index must still have been running after the kill"
    assert proc.returncode == 0, err
    assert f"indexed {N_IMAGES} of {N_IMAGES} images" in out
    assert re.search(r"^\d+ request\(s\) were sent again after the server did not answer$", err, re.M), err
    print(out, err.splitlines()[-1], sep="")
    assert stored(store) == expected  # nothing lost, nothing twice


def _stub_pid(server: LocalTriton, model_instance: str) -> int:
    """The pid of the server's Python-backend stub process serving ``model_instance`` (e.g. "detector_0_1")."""
    pids = [pid for pid, name in stub_instances(server.state().pid).items() if name == model_instance]
    assert len(pids) == 1, f"no stub process for {model_instance}"
    return pids[0]


def test_the_supervisor_brings_the_server_back_after_a_crash_and_a_stalled_model(built, catalog, tmp_path):
    """`deploy.local up` starts a supervisor. (1) tritonserver SIGKILLed: it is started again on the same ports and
    a client with retries answers through it. (2) The failure met on a paused VM: one detector stub stopped for 20 s.
    This Triton declares the stub unhealthy, fails its requests (INTERNAL "... is not healthy", which the client
    retries) and then aborts; every request is answered all the same. (3) A stub killed: the server runs on with that
    instance failing every request it gets; the supervisor restarts the server. (4) After `down` nothing comes back."""
    server = LocalTriton(tmp_path / "triton", built)
    ports = dict(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    st = server.up(**ports, timeout=240)
    photo = next(catalog.rglob("*.jpg")).read_bytes()
    try:
        supervisor = server.start_supervisor()
        assert server.supervisor_pid() == supervisor
        with RetrievalClient(st.grpc_url, retry_seconds=120.0) as client:
            client.infer(photo, "before")
            os.killpg(st.pid, signal.SIGKILL)
            wait_for(lambda: (server.state() or st).pid != st.pid, 60, "the supervisor to start a new server")
            assert client.infer(photo, "after the kill").objects
            second = server.state()
            assert second.grpc_port == st.grpc_port and second.pid != st.pid
            stub = _stub_pid(server, "detector_0_1")
            os.kill(stub, signal.SIGSTOP)
            answered = []
            try:
                t = time.monotonic()
                while time.monotonic() - t < 20:  # requests keep coming while the stub is stopped
                    answered.append(bool(client.infer(photo, "during the stall").objects))
            finally:
                os.kill(stub, signal.SIGCONT)
            answered += [bool(client.infer(photo, f"after the stall {i}").objects) for i in range(6)]
            assert answered and all(answered)
            # the server the stall brought down, replaced and ready (its model processes listed by up())
            third = wait_for(lambda: (s := server.state()) and s.pid != second.pid and s.stubs and s, 90, "a ready server after the stall")
            assert "detector_0_0" in third.stubs
            os.kill(_stub_pid(server, "detector_0_0"), signal.SIGKILL)
            wait_for(lambda: (server.state() or third).pid != third.pid, 60, "the supervisor to replace a server that lost a stub")
            assert all(client.infer(photo, f"after the lost stub {i}").objects for i in range(4))
            assert "detector_0_0" in stub_instances(server.state().pid).values()  # the new server has it again
        print(f"{len(answered)} requests answered across the stall; server pid {st.pid} -> {second.pid} -> {third.pid} -> "
              f"{server.state().pid}; supervisor log:\n{(server.state_dir / 'supervisor.log').read_text()}")
    finally:
        server.down()
    # down waits for the supervisor to exit: with it gone, nothing can start the server again
    assert not _alive(supervisor) and server.supervisor_pid() is None
    assert server.state() is None and not server.status()["running"]


def test_the_liveness_probe_fails_a_server_that_lost_a_stub_while_health_says_200(built, tmp_path):
    """deploy/k8s/triton_probe.py, run as the kubelet runs it, against a real tritonserver (no supervisor): live while
    every model answers; after one detector stub is killed, /v2/health/live and /ready still answer 200 but the probe
    fails every time (the kubelet restarts a container after 3 failures in a row, so failing now and then would not do)."""
    server = LocalTriton(tmp_path / "triton", built)
    st = server.up(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), timeout=240)
    url = f"http://127.0.0.1:{st.http_port}"
    cmd = [sys.executable, str(ROOT / "deploy" / "k8s" / "triton_probe.py"), "--url", url, "--requests", "2", "--timeout", "20"]
    try:
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0 and "live: 2 inferences of retrieval answered" in first.stderr, first.stderr
        os.kill(_stub_pid(server, "detector_0_0"), signal.SIGKILL)
        wait_for(lambda: "detector_0_0" not in stub_instances(st.pid).values(), 30, "the stub to be gone")
        for path in ("live", "ready"):
            assert urllib.request.urlopen(f"{url}/v2/health/{path}", timeout=5).status == 200
        runs = [subprocess.run(cmd, capture_output=True, text=True, timeout=60) for _ in range(3)]
        assert [r.returncode for r in runs] == [1, 1, 1], [r.stderr for r in runs]
        assert all("Stub process 'detector_0_0' is not healthy" in r.stderr for r in runs), runs[0].stderr
        print(runs[0].stderr.strip())
    finally:
        server.down()


def test_index_process_killed_and_started_again(triton, catalog, expected, tmp_path):
    store = tmp_path / "q"
    env = env_for(triton.grpc_url, store)
    before = successes(triton.metrics_port)
    proc = subprocess.Popen(index_cmd(catalog, "--concurrency", "1"), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: successes(triton.metrics_port) - before >= 20 or proc.poll() is not None, 240, "20 answered requests")
    assert proc.poll() is None, "the index finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert stored(store).items() <= expected.items()  # what was written is right, if incomplete

    again = subprocess.run(index_cmd(catalog), env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    m = re.search(rf"indexed {N_IMAGES} of {N_IMAGES} images \({N_IMAGES} products; (\d+) unchanged, (\d+) sent", again.stdout)
    assert m, again.stdout
    unchanged, sent = map(int, m.groups())
    print(again.stdout)
    assert unchanged >= 4 and unchanged + sent == N_IMAGES  # resumed: stored images were not sent again
    assert stored(store) == expected

    third = subprocess.run(index_cmd(catalog), env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0 and f"({N_IMAGES} products; {N_IMAGES} unchanged, 0 sent" in third.stdout
    assert stored(store) == expected


def test_a_changed_file_is_sent_again_and_replaces_its_points(client, catalog, tmp_path):
    import hashlib

    from PIL import Image

    folder = tmp_path / "catalog"
    shutil.copytree(catalog, folder)
    path = tmp_path / "q"
    with QdrantStore(path=path) as store:
        index_folder(folder, client, store)
    first = sorted(folder.rglob("*.jpg"))[0]
    old_sha = hashlib.sha256(first.read_bytes()).hexdigest()
    with Image.open(first) as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(first, quality=90)
    with QdrantStore(path=path) as store:
        report = index_folder(folder, client, store)
        assert (report.indexed, report.unchanged) == (N_IMAGES, N_IMAGES - 1)  # only the changed file was sent
        assert {p["sha256"] for p in store.image_points(str(first))} == {hashlib.sha256(first.read_bytes()).hexdigest()} != {old_sha}
    keys = [(product, obj) for product, _, obj, _ in stored(path).values()]
    assert len(keys) == len(set(keys)) and len({k[0] for k in keys}) == N_IMAGES  # one point per product and object


def test_a_locked_store_is_a_clear_error_and_nothing_is_sent(triton, catalog, tmp_path):
    path = tmp_path / "q"
    before = successes(triton.metrics_port)
    with QdrantStore(path=path):  # another process holds the folder
        out = subprocess.run(index_cmd(catalog), env=env_for(triton.grpc_url, path), cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert out.returncode == 1
    assert f"error: embedded Qdrant at {path} is in use by another process (pid {os.getpid()})" in out.stderr
    assert successes(triton.metrics_port) == before  # refused before any image reached the server
    with QdrantStore(path=path) as store:
        assert store.engine.collections() == []


def test_an_unreachable_qdrant_server_is_a_clear_error_and_nothing_is_sent(triton, catalog):
    url = f"http://127.0.0.1:{free_port()}"
    before = successes(triton.metrics_port)
    env = dict(os.environ, TRITON_URL=triton.grpc_url, QDRANT_URL=url)
    out = subprocess.run(index_cmd(catalog), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and f"error: cannot reach Qdrant at {url}" in out.stderr
    assert successes(triton.metrics_port) == before


def _fake_catalog(path: Path, *, embedder: str | None, dim: int) -> None:
    """A live catalog of 3 points built with another embedder (``None``: one that records none)."""
    rng = np.random.default_rng(0)
    with QdrantStore(path=path, embedder_id=embedder) as s:
        s.ensure(dim)
        s.upsert([CatalogPoint(vector=rng.normal(size=dim).astype(np.float32), product_id=f"p{i}", category="c",
                               fine_category="f", path=f"/old/p{i}.jpg", sha256=f"s{i}", box=(0, 0, 1, 1)) for i in range(3)])


@pytest.mark.parametrize("embedder, dim, built_with", [
    ("v1-0123456789abcdef", None, r"embedder v1-0123456789abcdef \(\d+-d vectors\)"),
    (None, 128, r"an embedder it does not record \(indexed before collections recorded one\) \(128-d vectors\)"),
], ids=["other-embedder", "other-size-unrecorded"])
def test_a_catalog_of_another_embedder_is_refused_with_what_to_run(triton, client, catalog, tmp_path, embedder, dim, built_with):
    path = tmp_path / "q"
    _fake_catalog(path, embedder=embedder, dim=dim or client.dim)
    before = stored(path)
    out = subprocess.run(index_cmd(catalog), env=env_for(triton.grpc_url, path), cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1
    assert re.search(rf"was built with {built_with} but the server runs embedder {client.embedder_id()}: re-index with "
                     r"`python -m client.rollout index DIR`, then `python -m client.rollout switch`", out.stderr), out.stderr
    assert "resume" not in out.stderr
    assert stored(path) == before
    with QdrantStore(path=path) as s:
        assert len(s.engine.collections()) == 1  # nothing created for the served embedder


# --- rolling out a new embedder: python -m client.rollout -----------------------------------------------------

NEW_EMBEDDER = "v1-rollout0000000000"


def _repository_with_another_embedder(built: Path, repo: Path) -> None:
    """A copy of the built repository whose embedder is a different model: the same network with its
    embeddings negated (so vectors of the two versions are not comparable) and another embedder_id."""
    import onnx
    from onnx import helper, numpy_helper

    from client import spec
    from export import repository

    repository.write(repo)
    for m in spec.ONNX_MODELS:
        if m.name != spec.EMBEDDER.name:
            shutil.copy2(spec.onnx_file(built, m.name), spec.onnx_file(repo, m.name))
    model = onnx.load(str(spec.onnx_file(built, spec.EMBEDDER.name)))
    emb = spec.EMBEDDINGS.name
    for node in model.graph.node:
        if spec.EMBEDDER_ID.name in node.output:
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array([NEW_EMBEDDER.encode()], dtype=object)))
        node.output[:] = [f"{emb}_original" if o == emb else o for o in node.output]
    model.graph.node.append(helper.make_node("Neg", [f"{emb}_original"], [emb]))
    onnx.checker.check_model(model)
    onnx.save(model, str(spec.onnx_file(repo, spec.EMBEDDER.name)))


def rollout(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client.rollout", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def _top1(path: Path, client: RetrievalClient, photo: Path) -> str:
    """The best product for ``photo`` in the live catalog, refused (StoreError) unless it serves ``client``'s embedder."""
    from client.search import search_image

    with QdrantStore(path=path) as store:
        store.check_embedder(client.embedder_id(), client.dim)
        objects = search_image(photo.read_bytes(), client, store, top_k=1, filter_by_category=False)
    return max((r for o in objects for r in o.results), key=lambda r: r["score"])["product_id"]


def test_rollout_index_switch_rollback_on_the_local_stack(built, triton, client, catalog, tmp_path):
    from client.store import StoreError
    from client.store.products import collection_for

    folder = tmp_path / "catalog"
    for src in sorted(catalog.rglob("*.jpg"))[:12]:
        (folder / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, folder / src.parent.name / src.name)
    photo = sorted(folder.rglob("*.jpg"))[3]
    path = tmp_path / "q"
    old, new = collection_for(client.embedder_id()), collection_for(NEW_EMBEDDER)
    env_old = env_for(triton.grpc_url, path)
    first = subprocess.run(index_cmd(folder), env=env_old, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert f"into {old} (alias products -> {old})" in first.stdout

    _repository_with_another_embedder(built, tmp_path / "repo_v2")
    server = LocalTriton(tmp_path / "triton_v2", tmp_path / "repo_v2")
    st = server.up(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), timeout=240)
    try:
        env_new = env_for(st.grpc_url, path)
        with RetrievalClient(st.grpc_url) as client_v2:
            assert client_v2.embedder_id() == NEW_EMBEDDER
            refused = subprocess.run(index_cmd(folder), env=env_new, cwd=ROOT, capture_output=True, text=True, timeout=600)
            assert refused.returncode == 1 and "re-index with `python -m client.rollout index DIR`" in refused.stderr

            indexed = rollout("index", str(folder), env=env_new)  # the old catalog keeps serving meanwhile
            assert indexed.returncode == 0, indexed.stderr
            assert f"into {new} (alias products -> {old})" in indexed.stdout
            assert f"the alias products still serves {old}; make {new} live with `python -m client.rollout switch`" in indexed.stdout
            assert _top1(path, client, photo) == photo.stem  # searches still read the old catalog, with the old model
            with pytest.raises(StoreError, match=f"{new} is indexed .*make it live with `python -m client.rollout switch`"):
                _top1(path, client_v2, photo)

            status = json.loads(rollout("status", "--json", env=env_new).stdout)
            assert status["served_embedder_id"] == NEW_EMBEDDER
            rows = {r["collection"]: r for r in status["collections"]}
            assert set(rows) == {old, new} and rows[old]["live"] and not rows[new]["live"]
            assert rows[old]["points"] == rows[new]["points"] > 0 and rows[new]["embedder_id"] == NEW_EMBEDDER
            printed = rollout("status", env=env_new).stdout
            assert f"alias products -> {old}; the server runs embedder {NEW_EMBEDDER}" in printed

            switched = rollout("switch", env=env_new)
            assert switched.returncode == 0 and f"alias products: {old} -> {new}" in switched.stdout
            assert _top1(path, client_v2, photo) == photo.stem  # live: the new model on its own catalog
            with pytest.raises(StoreError, match=f"built with embedder {NEW_EMBEDDER}"):
                _top1(path, client, photo)

        back = rollout("rollback", env=env_new)
        assert back.returncode == 0 and f"alias products: {new} -> {old}" in back.stdout
        assert _top1(path, client, photo) == photo.stem
        again = rollout("rollback", env=env_new)
        assert again.returncode == 1 and f"{old} records no collection it replaced" in again.stderr
    finally:
        server.down()
