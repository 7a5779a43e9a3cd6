"""Calling the ensemble without the project's client: the generated reference (docs/triton-api.md) and
its two examples (curl over KServe v2 HTTP, plain grpcio stubs), run against a real tritonserver.

The error table of the reference is data (export.reference.ERRORS); every row is sent here over both
protocols and must reach the caller with the documented status, after which the server still serves.
"""
from __future__ import annotations

import ast
import base64
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

from client import imaging, spec
from deploy.local import free_port
from export import reference

ROOT = Path(__file__).resolve().parent.parent
CURL_EXAMPLE = ROOT / reference.CURL_EXAMPLE
GRPC_EXAMPLE = ROOT / reference.GRPC_EXAMPLE
INPUT = spec.ENSEMBLE_INPUTS[0].name
ENSEMBLE_TENSORS = {t.name for t in (*spec.ENSEMBLE_INPUTS, *spec.ENSEMBLE_OUTPUTS)}
PROJECT_PACKAGES = {"client", "export", "deploy", "bench", "tests"}
integration = pytest.mark.integration


# --- the reference -------------------------------------------------------------------------------

def test_reference_page_is_current():
    assert reference.check() == [], "docs/triton-api.md is out of date: run `python -m export.reference`"


def test_reference_names_every_ensemble_input_and_output_with_its_wire_datatype():
    text = reference.DOC.read_text()
    for t in (*spec.ENSEMBLE_INPUTS, *spec.ENSEMBLE_OUTPUTS):
        wire = "BYTES" if t.dtype == "STRING" else t.dtype
        shape = "[" + ", ".join(map(str, t.dims)) + "]"
        assert f"| `{t.name}` | `TYPE_{t.dtype}` | `{wire}` | {shape} |" in text, t.name
    for m in spec.STEPS:
        assert f"| `{m.name}` |" in text
    assert f"../{reference.CURL_EXAMPLE}" in text and f"../{reference.GRPC_EXAMPLE}" in text


def test_a_missing_or_unknown_meaning_is_refused():
    meanings = {k: v for k, v in reference.MEANINGS.items() if k != "valid"} | {"det_boxes": "not an ensemble output"}
    problems = reference.meaning_problems(meanings)
    assert len(problems) == 2
    assert "'valid' has no meaning" in problems[0] and "'det_boxes'" in problems[1]
    assert reference.meaning_problems() == []


def test_check_exits_1_on_a_stale_page_and_writing_fixes_it(tmp_path, capsys):
    page = tmp_path / "triton-api.md"
    page.write_text(reference.render().replace("INVALID_ARGUMENT", "INTERNAL"))
    assert reference.main(["--check", "--doc", str(page)]) == 1
    assert "INTERNAL" in capsys.readouterr().err
    assert reference.main(["--doc", str(page)]) == 0
    assert reference.main(["--check", "--doc", str(page)]) == 0


def test_every_documented_error_is_sent_by_these_tests():
    assert {e.key for e in reference.ERRORS} == set(BAD_REQUESTS) | {"not_json", "server_down"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def _constants(path: Path) -> dict:
    tree = ast.parse(path.read_text())
    return {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
            if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and isinstance(n.value, (ast.Constant, ast.Tuple))}


def test_examples_use_no_project_code_and_only_the_spec_names():
    assert not _imports(GRPC_EXAMPLE) & PROJECT_PACKAGES
    assert "InferenceServerClient" not in GRPC_EXAMPLE.read_text().split('"""', 2)[2]  # the code, not the docstring
    c = _constants(GRPC_EXAMPLE)
    assert c["MODEL"] == spec.ENSEMBLE and c["INPUT"] == INPUT and set(c["OUTPUTS"]) <= ENSEMBLE_TENSORS
    assert f'"{spec.DEFAULT_TRITON_URL}"' in GRPC_EXAMPLE.read_text()
    curl = CURL_EXAMPLE.read_text()
    names = re.findall(r'"name":"(\w+)"', curl)
    assert names[0] == INPUT and set(names) <= ENSEMBLE_TENSORS and len(names) >= 6
    assert f"/v2/models/{spec.ENSEMBLE}/infer" in curl
    assert not re.search(r"\b(python|tritonclient|client\.|export\.|deploy\.)", curl.split("set -euo pipefail", 1)[1])


# --- against a real tritonserver ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tools():
    missing = [t for t in ("curl", "jq", "bash") if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} not installed: the curl example needs them")
        pytest.skip(f"{missing} not installed")


@pytest.fixture(scope="module")
def images(demo, tmp_path_factory):
    """A generated scene with products (detections) and a blank JPEG (only the whole-image row)."""
    folder = tmp_path_factory.mktemp("api_images")
    blank = folder / "blank.jpg"
    blank.write_bytes(imaging.encode_jpeg(Image.new("RGB", (500, 300), (128, 128, 128))))
    return [demo / "queries" / "scene_0.jpg", blank]


@pytest.fixture(scope="module")
def grpc_example():
    """examples/grpc_infer.py as a module (its infer() reads the raw outputs with numpy)."""
    loader = importlib.util.spec_from_file_location("grpc_infer_example", GRPC_EXAMPLE)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stub(triton):
    with grpc.insecure_channel(triton.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


ROW = re.compile(r"^row (\d+)( \(whole image\))? (.*)$")
FIELD = re.compile(r'([\w\[\]:]+)=(\[[^\]]*\]|"(?:[^"\\]|\\.)*"|\S+)')


def parse_printed(stdout: str) -> dict:
    """The lines both examples print -> {"embedder_id", "valid", "rows": {index: {field: value, "whole": bool}}}."""
    out: dict = {"rows": {}}
    for line in stdout.splitlines():
        if line.startswith("embedder_id "):
            out["embedder_id"] = line.split(" ", 1)[1]
        elif line.startswith("valid "):
            out["valid"] = json.loads(line.split(" ", 1)[1])
        elif m := ROW.match(line):
            row = {k: json.loads(v) for k, v in FIELD.findall(m.group(3))}
            out["rows"][int(m.group(1))] = row | {"whole": bool(m.group(2))}
    return out


def assert_agrees_with_the_client(printed: dict, want) -> None:
    assert printed["embedder_id"] == want.embedder_id
    mask = [o.valid for o in want.rows]  # the documented row layout: the client's rows, the whole image last
    assert printed["valid"] == mask
    assert sorted(printed["rows"]) == [i for i, v in enumerate(mask) if v]
    for (i, row), obj in zip(sorted(printed["rows"].items()), want.objects):
        assert row["whole"] == obj.whole_image == (i == len(mask) - 1)
        np.testing.assert_allclose(row["box"], obj.box, atol=1e-3)
        assert row["category"] == obj.category
        assert row["score"] == pytest.approx(obj.score, abs=1e-4)
        np.testing.assert_allclose(row["embedding[:4]"], obj.embedding[:4], atol=1e-4)


def run_curl_example(image: Path, http: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CURL_EXAMPLE), str(image)], env=dict(os.environ, TRITON_HTTP=http),
                          capture_output=True, text=True, timeout=120)


def run_grpc_example(image: Path, url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GRPC_EXAMPLE), str(image), "--url", url], capture_output=True, text=True, timeout=120)


@integration
@pytest.mark.parametrize("which", [0, 1], ids=["scene", "blank"])
def test_curl_example_prints_what_the_client_gets(triton, client, tools, images, which):
    proc = run_curl_example(images[which], f"127.0.0.1:{triton.http_port}")
    assert proc.returncode == 0, proc.stderr
    assert_agrees_with_the_client(parse_printed(proc.stdout), client.infer(images[which].read_bytes()))


@integration
@pytest.mark.parametrize("which", [0, 1], ids=["scene", "blank"])
def test_grpc_example_prints_what_the_client_gets(triton, client, images, which):
    proc = run_grpc_example(images[which], triton.grpc_url)
    assert proc.returncode == 0, proc.stderr
    assert_agrees_with_the_client(parse_printed(proc.stdout), client.infer(images[which].read_bytes()))


@integration
def test_scene_has_detections_and_blank_has_only_the_whole_image(triton, images):
    scene, blank = (parse_printed(run_grpc_example(p, triton.grpc_url).stdout) for p in images)
    assert any(scene["valid"][:-1]) and not scene["valid"][-1]
    assert blank["valid"][-1] and not any(blank["valid"][:-1])
    assert blank["rows"][len(blank["valid"]) - 1]["box"] == [0, 0, 500, 300]


@integration
def test_rows_are_laid_out_as_the_reference_says(stub, grpc_example, images):
    for path in images:
        out = grpc_example.infer(stub, path.read_bytes())
        scores, valid = out["scores"], out["valid"]
        n = len(valid)
        assert 1 <= n <= spec.NUM_ROWS and out["embeddings"].shape == (n, spec.EMBED_DIM)
        assert np.all(np.diff(scores[:-1]) <= 0), "detections sorted by score"
        assert list(valid[:-1]) == list(scores[:-1] >= np.float32(spec.SCORE_THRESHOLD))
        weak = scores[:-1] < np.float32(spec.SCORE_THRESHOLD)
        assert weak.sum() <= spec.EXTRA_CANDIDATES and np.all(scores[:-1][weak] >= np.float32(spec.EXTRA_MIN_SCORE))
        assert valid[-1] == (not valid[:-1].any()) and scores[-1] == spec.WHOLE_IMAGE_SCORE
        with Image.open(path) as im:
            assert out["boxes"][-1].tolist() == [0, 0, im.width, im.height]
        np.testing.assert_allclose(np.linalg.norm(out["embeddings"], axis=1), 1.0, atol=1e-4)
        assert out["embedder_id"].reshape(-1)[0].decode().startswith(f"v{spec.EMBEDDER_VERSION}-")


# --- errors ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    datatype: str
    shape: tuple[int, ...]
    raw: bytes  # the input's raw contents: gRPC raw_input_contents[0], HTTP binary tensor data
    model: str = spec.ENSEMBLE
    input: str = INPUT
    outputs: tuple[str, ...] = ()


def lp(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _huge_png() -> bytes:
    """12000 x 10000 one-bit pixels (120 Mpx) in a small file: a decompression bomb."""
    import io

    buf = io.BytesIO()
    Image.new("1", (12000, 10000)).save(buf, "PNG")
    return buf.getvalue()


def _tiny_png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    return buf.getvalue()


BAD_REQUESTS = {  # error key (export.reference.ERRORS) -> the request, given a good JPEG
    "not_an_image": lambda jpg: Request("BYTES", (1,), lp(b"this is not an image")),
    "empty": lambda jpg: Request("BYTES", (1,), lp(b"")),
    "too_small": lambda jpg: Request("BYTES", (1,), lp(_tiny_png())),
    "too_many_pixels": lambda jpg: Request("BYTES", (1,), lp(_huge_png())),
    "two_images": lambda jpg: Request("BYTES", (2,), lp(jpg, jpg)),
    "wrong_dtype": lambda jpg: Request("UINT8", (len(jpg),), jpg),
    "no_length_prefix": lambda jpg: Request("BYTES", (1,), jpg),
    "unknown_input": lambda jpg: Request("BYTES", (1,), lp(jpg), input="image"),
    "unknown_output": lambda jpg: Request("BYTES", (1,), lp(jpg), outputs=("no_such_output",)),
    "unknown_model": lambda jpg: Request("BYTES", (1,), lp(jpg), model="no_such_model"),
}
ERRORS = {e.key: e for e in reference.ERRORS}


def grpc_send(stub, r: Request):
    request = service_pb2.ModelInferRequest(model_name=r.model)
    request.inputs.add(name=r.input, datatype=r.datatype, shape=list(r.shape))
    request.raw_input_contents.append(r.raw)
    for name in r.outputs:
        request.outputs.add(name=name)
    return stub.ModelInfer(request, timeout=60)


def curl_send(http: str, r: Request, folder: Path) -> tuple[int, dict]:
    """POSTs the request with curl (binary tensor data extension); (HTTP status, JSON body)."""
    header = json.dumps({"inputs": [{"name": r.input, "shape": list(r.shape), "datatype": r.datatype,
                                     "parameters": {"binary_data_size": len(r.raw)}}],
                         "outputs": [{"name": n} for n in r.outputs]}).encode()
    body, answer = folder / "body.bin", folder / "answer.json"
    body.write_bytes(header + r.raw)
    proc = subprocess.run(["curl", "-sS", "-o", str(answer), "-w", "%{http_code}", "-X", "POST",
                           f"http://{http}/v2/models/{r.model}/infer", "-H", "Content-Type: application/octet-stream",
                           "-H", f"Inference-Header-Content-Length: {len(header)}", "--data-binary", f"@{body}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout), json.loads(answer.read_bytes())


@integration
@pytest.mark.parametrize("key", sorted(BAD_REQUESTS))
def test_grpc_caller_gets_the_documented_error_and_the_server_keeps_serving(stub, grpc_example, images, key):
    jpg = images[1].read_bytes()
    with pytest.raises(grpc.RpcError) as err:
        grpc_send(stub, BAD_REQUESTS[key](jpg))
    assert err.value.code().name == ERRORS[key].grpc
    assert ERRORS[key].message in err.value.details()
    assert grpc_example.infer(stub, jpg)["valid"][-1]  # a good request still works (a blank: the whole image)


@integration
@pytest.mark.parametrize("key", sorted(BAD_REQUESTS))
def test_http_caller_gets_the_documented_error_and_the_server_keeps_serving(triton, tools, images, tmp_path, key):
    http = f"127.0.0.1:{triton.http_port}"
    jpg = images[1].read_bytes()
    status, answer = curl_send(http, BAD_REQUESTS[key](jpg), tmp_path)
    assert status == ERRORS[key].http
    assert ERRORS[key].message in answer["error"]
    status, answer = curl_send(http, Request("BYTES", (1,), lp(jpg), outputs=("valid",)), tmp_path)
    valid = answer["outputs"][0]["data"]
    assert status == 200 and valid[-1] and not any(valid[:-1])


@integration
def test_http_json_strings_are_text_and_no_outputs_asked_means_all(triton, tools, images, tmp_path):
    """What the reference says about the plain JSON form: a base64 string reaches the model as text."""
    http = f"127.0.0.1:{triton.http_port}"
    jpg = images[1].read_bytes()
    request = {"inputs": [{"name": INPUT, "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(jpg).decode()]}]}
    proc = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "-X", "POST", "-H", "Content-Type: application/json",
                           f"http://{http}/v2/models/{spec.ENSEMBLE}/infer", "-d", json.dumps(request)],
                          capture_output=True, text=True, timeout=60)
    body, status = proc.stdout.rsplit("\n", 1)
    assert int(status) == 400 and ERRORS["not_an_image"].message in json.loads(body)["error"]
    status, answer = curl_send(http, Request("BYTES", (1,), lp(jpg)), tmp_path)
    assert status == 200 and {o["name"] for o in answer["outputs"]} == {t.name for t in spec.ENSEMBLE_OUTPUTS}


@integration
def test_http_body_that_is_not_json_gets_the_documented_status(triton, tools):
    proc = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "-X", "POST", "-H", "Content-Type: application/json",
                           f"http://127.0.0.1:{triton.http_port}/v2/models/{spec.ENSEMBLE}/infer", "-d", '{"inputs":'],
                          capture_output=True, text=True, timeout=60)
    body, status = proc.stdout.rsplit("\n", 1)
    assert int(status) == ERRORS["not_json"].http and ERRORS["not_json"].message in json.loads(body)["error"]


@integration
def test_examples_report_a_refused_image_and_a_server_that_is_down(triton, tools, tmp_path):
    not_image = tmp_path / "notes.jpg"
    not_image.write_bytes(b"this is not an image")
    proc = run_grpc_example(not_image, triton.grpc_url)
    assert proc.returncode == 1 and f"{ERRORS['not_an_image'].grpc}: " in proc.stderr
    assert ERRORS["not_an_image"].message in proc.stderr
    proc = run_curl_example(not_image, f"127.0.0.1:{triton.http_port}")
    assert proc.returncode == 1 and f"HTTP {ERRORS['not_an_image'].http}:" in proc.stderr
    assert ERRORS["not_an_image"].message in proc.stderr

    down = f"127.0.0.1:{free_port()}"
    proc = run_grpc_example(not_image, down)
    assert proc.returncode == 1 and f"{ERRORS['server_down'].grpc}: " in proc.stderr
    assert ERRORS["server_down"].message in proc.stderr
    proc = run_curl_example(not_image, down)
    assert proc.returncode == 2 and "cannot reach Triton" in proc.stderr and "(curl exit 7)" in proc.stderr
