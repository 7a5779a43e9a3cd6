"""Issue 12's security items, each checked where it can be here: local services listen on loopback only;
indexing never reads outside the catalog folder; reports escape names; API keys come from the environment
only (never an option, never echoed); Triton refuses model loads from its network API."""
from __future__ import annotations

import ast
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from PIL import Image

from client.catalog import list_catalog, read_inside

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for d in ("client", "deploy", "bench", "export", "examples") for p in sorted((ROOT / d).rglob("*.py"))]


def _listening(port: int) -> list[str]:
    """Local addresses of the LISTEN sockets on ``port`` (IPv4 and IPv6), from /proc/net."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                out.append(addr)
    return out


# 127.0.0.1, ::1 and ::ffff:127.0.0.1 (gRPC's IPv6 socket for an IPv4 address) as /proc/net writes them
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


@pytest.mark.integration
def test_local_triton_listens_on_loopback_only(triton):
    for port in (triton.grpc_port, triton.http_port, triton.metrics_port):
        addrs = _listening(port)
        assert addrs and set(addrs) <= LOOPBACK, (port, addrs)


def test_compose_publishes_every_port_on_loopback_by_default():
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host = str(port).rsplit(":", 2)[0]
            assert host in ("127.0.0.1", "${PUBLISH_ADDRESS:-127.0.0.1}"), (name, port)


def test_indexing_reads_nothing_outside_the_catalog_folder(tmp_path):
    root, outside = tmp_path / "catalog", tmp_path / "private"
    (root / "shop").mkdir(parents=True)
    outside.mkdir()
    secret = outside / "secret.jpg"
    Image.new("RGB", (16, 16)).save(secret)
    Image.new("RGB", (16, 16)).save(root / "shop" / "ok.jpg")
    (root / "shop" / "link.jpg").symlink_to(secret)  # a file link leading out
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)  # a folder link leading out
    (root / "shop" / "inside_link.jpg").symlink_to(root / "shop" / "ok.jpg")  # a link inside: fine
    listed = list_catalog(root)
    assert root / "linked_dir" / "secret.jpg" not in listed  # folder links are not followed
    assert read_inside(root / "shop" / "ok.jpg", root) == read_inside(root / "shop" / "inside_link.jpg", root)
    with pytest.raises(OSError, match=r"links outside the catalog folder \(to .*secret\.jpg\); not read"):
        read_inside(root / "shop" / "link.jpg", root)
    with pytest.raises(OSError, match="links outside the catalog folder"):
        read_inside(root / "shop" / ".." / ".." / "private" / "secret.jpg", root)


HOSTILE = ['</script><script>alert("id")</script>', '<img src=x onerror=alert(1)>', '"><svg onload=alert(2)>']


def test_reports_escape_every_file_name_and_label(tmp_path):
    from client import gallery

    objects = [{"box": [0, 0, 10, 10], "score": 0.9, "category": HOSTILE[1], "fine_class": HOSTILE[2], "whole_image": False,
                "valid": True, "results": [{"product_id": h, "path": f"/x/{h}.jpg", "score": 0.5} for h in HOSTILE]}]
    page = tmp_path / "report.html"
    gallery.write_report(page, {"image": HOSTILE[0], "objects": objects}, {"query": Image.new("RGB", (32, 32))})
    html = page.read_text()
    for h in HOSTILE:
        assert h not in html, f"{h!r} reaches the page unescaped"
    assert len(re.findall(r"</script", html, re.I)) == html.count("<script")  # no name closes a script element


def _cli_options() -> list[tuple[str, str]]:
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        found.append((str(path.relative_to(ROOT)), arg.value))
    return found


def test_no_command_takes_a_key_or_password_as_an_option():
    options = _cli_options()
    assert len(options) > 50  # the scan sees the project's CLIs
    secret = [o for o in options if re.search(r"key|token|passw|secret|credential", o[1], re.I)]
    assert secret == []


def test_the_api_key_comes_from_the_environment_and_is_never_echoed(monkeypatch):
    from client.store import QdrantStore, StoreError
    from deploy.local import free_port

    key = "s3cr3t-key-from-the-environment"
    monkeypatch.setenv("QDRANT_API_KEY", key)
    monkeypatch.setenv("QDRANT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreError) as err:
        QdrantStore()
    assert "cannot reach Qdrant" in str(err.value) and key not in str(err.value) and key not in repr(err.value.__cause__)


@pytest.mark.integration
def test_triton_refuses_model_loads_and_unloads_from_the_network(triton, client):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    c = grpcclient.InferenceServerClient(triton.grpc_url)
    for call in (lambda: c.load_model("retrieval"), lambda: c.unload_model("retrieval"),
                 lambda: c.load_model("evil", files={"file:1/model.py": b"import os"})):
        with pytest.raises(InferenceServerException, match="explicit model load / unload is not allowed"):
            call()
    req = urllib.request.Request(f"http://127.0.0.1:{triton.http_port}/v2/repository/models/retrieval/unload", data=b"{}",
                                 method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 503 and "not allowed" in json.loads(err.value.read())["error"]
    assert c.is_model_ready("retrieval") and "evil" not in {m.name for m in c.get_model_repository_index().models}
    assert client.infer(_jpeg(), "after.jpg").rows  # still serving


def _jpeg() -> bytes:
    from client.imaging import encode_jpeg

    return encode_jpeg(Image.new("RGB", (64, 64), (90, 140, 200)))


def test_local_triton_starts_in_a_mode_that_refuses_network_loads():
    source = (ROOT / "deploy" / "local.py").read_text()
    assert "--model-control-mode" not in source or "--model-control-mode=none" in source  # none is the default
    assert all(f"--{k}-address=127.0.0.1" in source for k in ("http", "grpc", "metrics"))
