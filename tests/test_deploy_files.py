"""The production deployment files agree with each other and with client/spec.py.

No Docker engine or cluster exists here, so every YAML/JSON file under deploy/compose, deploy/k8s and
deploy/monitoring is parsed and cross-checked: the Kubernetes manifests against the API schemas that
kubernetes-validate ships (offline, strict: unknown fields fail), the compose files against the
compose-spec schema vendored in check-jsonschema, every PromQL expression with a real parser
(promql-parser), and names, ports, probes, volumes, resources and secrets between the files.
"""
from __future__ import annotations

import http.server
import importlib.resources
import importlib.util
import io
import json
import re
import threading
from pathlib import Path

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml

from client import spec
from client.store import products

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose"
K8S = ROOT / "deploy" / "k8s"
MONITORING = ROOT / "deploy" / "monitoring"
K8S_VERSION = "1.31"

# Every metric a dashboard panel or the autoscaling rule may name, defined once. Triton 2.51: the
# inference and CPU names were read from a real 2.51 server's /metrics (--metrics-config
# summary_latencies=true); the GPU names from docs/user_guide/metrics.md. Qdrant: src/common/metrics.rs.
TRITON_METRICS = {
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count", "nv_inference_exec_count",
    "nv_inference_pending_request_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us", "nv_gpu_utilization", "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes", "nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption",
    "nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes",
    "nv_pinned_memory_pool_total_bytes", "nv_pinned_memory_pool_used_bytes",
}
TRITON_SUMMARIES = {  # only with --metrics-config summary_latencies=true; each also has _count and _sum
    "nv_inference_request_summary_us", "nv_inference_queue_summary_us", "nv_inference_compute_input_summary_us",
    "nv_inference_compute_infer_summary_us", "nv_inference_compute_output_summary_us",
}
QDRANT_METRICS = {
    "app_info", "collections_total", "collections_vector_total", "cluster_enabled", "cluster_peers_total",
    "cluster_term", "cluster_commit", "cluster_pending_operations_total", "cluster_voter",
    "rest_responses_total", "rest_responses_fail_total", "rest_responses_avg_duration_seconds",
    "rest_responses_min_duration_seconds", "rest_responses_max_duration_seconds", "grpc_responses_total",
    "grpc_responses_fail_total", "grpc_responses_avg_duration_seconds", "grpc_responses_min_duration_seconds",
    "grpc_responses_max_duration_seconds",
}
KNOWN_METRICS = TRITON_METRICS | QDRANT_METRICS | {"up"} | {
    s + suffix for s in TRITON_SUMMARIES for suffix in ("", "_count", "_sum")}
# NGC tritonserver release for a Triton version (the serve extra pins the matching tritonclient)
NGC_FOR_TRITON = {"2.51": "24.10"}
GPU_RESOURCE = "nvidia.com/gpu"


# --- loading ---------------------------------------------------------------------------------------------

class _Reset:
    """Compose's `!reset` (remove the attribute in an override file)."""


RESET = _Reset()


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)


def load_yaml(path: Path) -> list:
    return [d for d in yaml.load_all(path.read_text(), Loader=ComposeLoader) if d is not None]


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value, env: dict[str, str] | None = None):
    """Compose variable interpolation with the defaults (${X:-d}); ${X:?msg} gives a placeholder."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op and op.endswith("-"):
            return arg
        return f"<{name}>"

    return _VAR.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def merge(base, override):
    """Compose's merge of an override file, for what compose.cpu.yaml uses (mappings, !reset)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if value is RESET:
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value)
        return out
    return override


def leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from leaves(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from leaves(v)
    else:
        yield tree


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE / "compose.yaml")[0]


@pytest.fixture(scope="module")
def compose_cpu(compose) -> dict:
    return merge(compose, load_yaml(COMPOSE / "compose.cpu.yaml")[0])


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return load_yaml(K8S / "kustomization.yaml")[0]


def _env_file(path: Path) -> dict[str, str]:
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return dict(ln.split("=", 1) for ln in lines if ln and not ln.startswith("#"))


@pytest.fixture(scope="module")
def k8s(kustomization) -> list[dict]:
    """What `kubectl apply -k deploy/k8s` creates: the listed manifests plus the generated ConfigMaps."""
    docs = [d for f in kustomization["resources"] for d in load_yaml(K8S / f)]
    for gen in kustomization["configMapGenerator"]:
        data = {}
        for env in gen.get("envs", []):
            data.update(_env_file(K8S / env))
        for f in gen.get("files", []):
            data[f] = (K8S / f).read_text()
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    return docs


@pytest.fixture(scope="module")
def monitors() -> list[dict]:
    return load_yaml(K8S / "monitoring" / "servicemonitors.yaml")


@pytest.fixture(scope="module")
def adapter_rule() -> dict:
    (rule,) = load_yaml(K8S / "monitoring" / "prometheus-adapter-values.yaml")[0]["rules"]["custom"]
    return rule


@pytest.fixture(scope="module")
def prometheus() -> dict:
    return load_yaml(MONITORING / "prometheus.yml")[0]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((MONITORING / "dashboard.json").read_text())


def one(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]


def containers(workload: dict) -> list[dict]:
    ps = pod_spec(workload)
    return ps.get("initContainers", []) + ps["containers"]


def main_container(workload: dict) -> dict:
    return pod_spec(workload)["containers"][0]


def port_of(container: dict, ref) -> int:
    """A container port by name or number; fails when the container does not declare it."""
    for p in container.get("ports", []):
        if ref in (p.get("name"), p["containerPort"]):
            return p["containerPort"]
    raise AssertionError(f"container {container['name']} declares no port {ref!r}")


def published(service: dict) -> dict[int, str]:
    """container port -> host address of a compose service's short-syntax port mappings."""
    out = {}
    for entry in interpolate(service.get("ports", [])):
        host_ip, host_port, container_port = entry.split(":")
        assert host_port == container_port, f"{entry}: publish on the same port number"
        out[int(container_port)] = host_ip
    return out


def promql_selectors(expr: str) -> list:
    """Every vector selector of a PromQL expression (Grafana's range variables replaced)."""
    tree = promql_parser.parse(expr.replace("$__rate_interval", "5m").replace("$__interval", "1m"))
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        if type(node).__name__ == "VectorSelector":
            found.append(node)
        for attr in ("expr", "lhs", "rhs", "args", "param", "vector_selector"):
            child = getattr(node, attr, None)
            for c in child if isinstance(child, (list, tuple)) else [child]:
                if type(c).__module__.startswith("promql_parser"):
                    todo.append(c)
    return found


def matchers(selector) -> dict[str, str]:
    return {m.name: m.value for m in selector.matchers.matchers}


TRITON_FLAGS_PORT = re.compile(r"--(http|grpc|metrics)-port=(\d+)")


def triton_ports(args: list[str]) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for a in args if (m := TRITON_FLAGS_PORT.fullmatch(a))}


# --- every file parses -----------------------------------------------------------------------------------

def test_every_deploy_file_parses():
    files = [p for d in (COMPOSE, K8S, MONITORING) for p in sorted(d.rglob("*")) if p.suffix in (".yaml", ".yml", ".json")]
    assert len(files) >= 15
    for path in files:
        docs = [json.loads(path.read_text())] if path.suffix == ".json" else load_yaml(path)
        assert docs and all(isinstance(d, dict) for d in docs), path


# --- compose ---------------------------------------------------------------------------------------------

def _compose_schema() -> dict:
    ref = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return json.loads(ref.read_text())


def test_compose_files_validate_against_the_compose_spec(compose, compose_cpu):
    validator = jsonschema.Draft202012Validator(_compose_schema())
    for variant in (compose, compose_cpu):
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(interpolate(variant))]
        assert not errors, errors
    typo = interpolate(compose)
    typo["services"]["triton"]["healthcheck"]["intervall"] = "5s"  # the schema is strict enough to catch this
    assert not validator.is_valid(typo)


def test_gpu_lines_only_in_the_gpu_variant(compose, compose_cpu):
    gpu = compose["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    cpu_text = yaml.safe_dump(compose_cpu)
    assert "nvidia" not in cpu_text and "capabilities" not in cpu_text and "devices" not in cpu_text
    override = load_yaml(COMPOSE / "compose.cpu.yaml")[0]
    assert all(leaf is RESET for leaf in leaves(override)), "compose.cpu.yaml may only remove (GPU) lines"
    for name, service in compose["services"].items():  # same images, files and commands otherwise
        cpu_service = compose_cpu["services"][name]
        assert {k: v for k, v in cpu_service.items() if k != "deploy"} == {k: v for k, v in service.items() if k != "deploy"}
    limits = [c["services"]["triton"]["deploy"]["resources"]["limits"] for c in (compose, compose_cpu)]
    assert limits[0] == limits[1]
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "-f compose.yaml -f compose.cpu.yaml" in readme


def test_compose_ports_follow_the_contract_and_stay_on_loopback(compose):
    services = compose["services"]
    triton = services["triton"]
    ports = triton_ports(triton["command"])
    assert ports["grpc"] == int(spec.DEFAULT_TRITON_URL.rsplit(":", 1)[1]) == 8001
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert published(triton) == {8000: "127.0.0.1", 8001: "127.0.0.1", 8002: "127.0.0.1"}
    assert "PUBLISH_ADDRESS" not in " ".join(p for p in triton["ports"] if p.endswith(":8002")), "metrics stay on loopback"
    assert published(services["qdrant"]) == {6333: "127.0.0.1", 6334: "127.0.0.1"}
    for name in ("prometheus", "grafana"):
        assert set(published(services[name]).values()) == {"127.0.0.1"}
        assert "${" not in " ".join(services[name]["ports"])


def test_triton_refuses_model_loads_over_the_api(compose, k8s):
    for args in (compose["services"]["triton"]["command"], main_container(one(k8s, "Deployment", "triton"))["args"]):
        modes = [a for a in args if a.startswith("--model-control-mode")]
        assert modes == ["--model-control-mode=none"], "loads every model at start, load/unload requests fail"
        assert not [a for a in args if a.startswith(("--load-model", "--repository-poll-secs"))]


def test_compose_healthchecks_ask_the_readiness_endpoints(compose):
    services = compose["services"]
    assert all("healthcheck" in s for s in services.values()), "every service has a health check"
    triton = " ".join(services["triton"]["healthcheck"]["test"])
    assert "127.0.0.1:8000/v2/health/ready" in triton
    qdrant = " ".join(services["qdrant"]["healthcheck"]["test"])
    assert "/dev/tcp/127.0.0.1/6333" in qdrant and "GET /readyz" in qdrant
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_compose_model_repository_is_mounted_read_only(compose):
    triton = compose["services"]["triton"]
    (mount,) = [v for v in triton["volumes"] if isinstance(v, dict) and v["target"] == "/models"]
    assert mount["type"] == "bind" and mount["read_only"] is True
    assert "--model-repository=/models" in triton["command"]
    assert (COMPOSE / interpolate(mount["source"])).resolve() == ROOT / "model_repository"


def test_compose_volumes_secrets_and_resources_are_declared(compose):
    declared_volumes, declared_secrets = set(compose["volumes"]), compose["secrets"]
    for name, service in compose["services"].items():
        for v in service.get("volumes", []):
            if isinstance(v, str):
                assert v.split(":")[0] in declared_volumes, f"{name}: volume {v} is not declared"
            else:
                assert (COMPOSE / interpolate(v["source"])).exists(), f"{name}: {v['source']} does not exist"
                assert v["read_only"] is True
        for s in service.get("secrets", []):
            assert "environment" in declared_secrets[s], f"secret {s} comes from the environment"
        resources = service["deploy"]["resources"]
        assert {"cpus", "memory"} <= set(resources["limits"]) and "memory" in resources["reservations"], name


def test_compose_keys_come_from_the_environment(compose):
    env_example = _env_file(COMPOSE / ".env.example")
    used = set(_VAR.findall(yaml.safe_dump(load_yaml(COMPOSE / "compose.yaml"))))
    assert {u[0] for u in used} <= set(env_example), "every variable compose reads is in .env.example"
    for key in ("QDRANT_API_KEY", "QDRANT_READ_ONLY_API_KEY", "GRAFANA_ADMIN_PASSWORD"):
        assert env_example[key] == "", f".env.example leaves {key} empty"
    assert env_example["TRITON_URL"] == f"127.0.0.1:{triton_ports(compose['services']['triton']['command'])['grpc']}"
    assert env_example["QDRANT_URL"] == f"http://127.0.0.1:{min(published(compose['services']['qdrant']))}"
    qenv = compose["services"]["qdrant"]["environment"]
    assert qenv["QDRANT__SERVICE__API_KEY"].startswith("${QDRANT_API_KEY:?")
    assert qenv["QDRANT__SERVICE__READ_ONLY_API_KEY"].startswith("${QDRANT_READ_ONLY_API_KEY:?")
    for name, service in compose["services"].items():
        command = " ".join(service.get("command", []))
        assert not re.search(r"api[-_]?key|password", command, re.I), f"{name}: a secret on the command line"


def test_triton_image_matches_the_repository_version(compose):
    dockerfile = (COMPOSE / "Dockerfile.triton").read_text()
    tag = re.search(r"^ARG TRITON_TAG=(\S+)$", dockerfile, re.M).group(1)
    assert "FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}" in dockerfile
    assert re.search(r'pip install --no-cache-dir "pillow==[\d.]+"', dockerfile), "Pillow pinned for preprocess"
    (pin,) = re.findall(r'"tritonclient==(\d+\.\d+)\.\d+"', (ROOT / "pyproject.toml").read_text())  # the serve extra
    assert tag == f"{NGC_FOR_TRITON[pin]}-py3", f"Triton {pin} is NGC {NGC_FOR_TRITON[pin]}"
    assert compose["services"]["triton"]["image"].endswith(f":{tag}-pillow")


# --- Kubernetes --------------------------------------------------------------------------------------------

def test_k8s_manifests_validate_against_the_kubernetes_schemas(k8s, monitors):
    for doc in k8s:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    broken = json.loads(json.dumps(one(k8s, "Deployment", "triton")))
    main_container(broken)["readinesProbe"] = main_container(broken).pop("readinessProbe")  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    for m in monitors:  # a CRD: no schema ships; the fields the operator needs
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(m, K8S_VERSION, strict=True)
        assert m["apiVersion"] == "monitoring.coreos.com/v1" and m["metadata"]["namespace"] == "imgretrieval"
        assert m["spec"]["selector"]["matchLabels"] and m["spec"]["endpoints"][0]["port"]


def test_kustomization_lists_every_manifest(kustomization, k8s):
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    assert kustomization["namespace"] == one(k8s, "Namespace", "imgretrieval")["metadata"]["name"]
    (image,) = kustomization["images"]
    triton_image = main_container(one(k8s, "Deployment", "triton"))["image"]
    assert triton_image == f"{image['name']}:{image['newTag']}"


def test_services_select_pods_and_target_declared_ports(k8s):
    for svc in [d for d in k8s if d["kind"] == "Service"]:
        selector = svc["spec"]["selector"]
        (target,) = [w for w in workloads(k8s) if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert selector.items() <= target["spec"]["selector"]["matchLabels"].items()
        for p in svc["spec"]["ports"]:
            assert port_of(main_container(target), p["targetPort"]) == p["port"], f"{svc['metadata']['name']}:{p['name']}"
    triton_svc = one(k8s, "Service", "triton")
    grpc = [p["port"] for p in triton_svc["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc == [int(spec.DEFAULT_TRITON_URL.rsplit(":", 1)[1])]


def test_probes_point_at_declared_ports(k8s):
    expected = {"triton": {"readinessProbe": "/v2/health/ready", "startupProbe": "/v2/health/ready"},
                "qdrant": {"readinessProbe": "/readyz", "livenessProbe": "/livez", "startupProbe": "/livez"}}
    http = {"triton": 8000, "qdrant": 6333}
    for name, probes in expected.items():
        workload = [w for w in workloads(k8s) if w["metadata"]["name"] == name][0]
        c = main_container(workload)
        for probe, path in probes.items():
            assert c[probe]["httpGet"]["path"] == path, f"{name} {probe}"
            assert port_of(c, c[probe]["httpGet"]["port"]) == http[name], f"{name} {probe}"
    deployment = main_container(one(k8s, "Deployment", "triton"))
    # Triton's liveness: triton_probe.py (live endpoint + inferences), mounted from its ConfigMap, on the HTTP port
    command = deployment["livenessProbe"]["exec"]["command"]
    mount = {m["name"]: m["mountPath"] for m in deployment["volumeMounts"]}
    (volume,) = [v for v in pod_spec(one(k8s, "Deployment", "triton"))["volumes"] if "configMap" in v]
    assert command[:2] == ["python3", f"{mount[volume['name']]}/triton_probe.py"]
    assert set(one(k8s, "ConfigMap", volume["configMap"]["name"])["data"]) == {"triton_probe.py"}
    url = command[command.index("--url") + 1]
    assert url == f"http://127.0.0.1:{port_of(deployment, 'http')}"
    assert command[command.index("--model") + 1] == spec.ENSEMBLE
    probe = deployment["livenessProbe"]
    assert probe["timeoutSeconds"] > 5 + float(command[command.index("--timeout") + 1]), "the probe's own limits fit in its timeout"
    compose = load_yaml(COMPOSE / "compose.yaml")[0]["services"]["triton"]
    assert deployment["args"] == compose["command"], "the same tritonserver flags in compose and Kubernetes"
    assert triton_ports(deployment["args"]) == {p["name"]: p["containerPort"] for p in deployment["ports"]}


def test_volumes_are_declared_and_the_model_repository_is_read_only(k8s):
    for w in workloads(k8s):
        declared = {v["name"] for v in pod_spec(w).get("volumes", [])}
        declared |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for c in containers(w):
            for m in c.get("volumeMounts", []):
                assert m["name"] in declared, f"{w['metadata']['name']}/{c['name']}: volume {m['name']} is not declared"
    triton = one(k8s, "Deployment", "triton")
    (fetch,) = pod_spec(triton)["initContainers"]
    repo = [m for m in main_container(triton)["volumeMounts"] if m["mountPath"] == "/models"]
    assert repo and repo[0]["readOnly"] is True and "--model-repository=/models" in main_container(triton)["args"]
    writer = [m for m in fetch["volumeMounts"] if m["name"] == repo[0]["name"]]
    assert writer and not writer[0].get("readOnly") and writer[0]["mountPath"] in fetch["args"]
    source = one(k8s, "ConfigMap", "triton-model-source")["data"]
    for ref in re.findall(r"\$\((\w+)\)", " ".join(fetch["args"])):
        (env,) = [e for e in fetch["env"] if e["name"] == ref]
        assert env["valueFrom"]["configMapKeyRef"]["key"] in source
    remote = re.search(r"(\w+):\$\(", " ".join(fetch["args"])).group(1).upper()
    assert source[f"RCLONE_CONFIG_{remote}_TYPE"], "the rclone remote the init container reads is configured"


def test_every_container_has_requests_and_limits(k8s):
    for w in workloads(k8s):
        for c in containers(w):
            r = c["resources"]
            assert {"cpu", "memory"} <= set(r["requests"]) and {"cpu", "memory"} <= set(r["limits"]), c["name"]
    triton = main_container(one(k8s, "Deployment", "triton"))["resources"]
    assert triton["limits"][GPU_RESOURCE] == triton["requests"][GPU_RESOURCE] >= 1


def test_api_keys_come_from_the_secret_and_never_from_a_command_line(k8s, monitors):
    refs = []
    for w in workloads(k8s):
        for c in containers(w):
            line = " ".join(c.get("command", []) + c.get("args", []))
            assert not re.search(r"api[-_]?key|password|secret", line, re.I), f"{c['name']}: a secret on the command line"
            for e in c.get("env", []):
                if "KEY" in e["name"]:
                    assert "value" not in e, f"{c['name']}: {e['name']} is a literal"
                    refs.append(e["valueFrom"]["secretKeyRef"])
    refs += [e["authorization"]["credentials"] for m in monitors for e in m["spec"]["endpoints"] if "authorization" in e]
    assert {(r["name"], r["key"]) for r in refs} == {("qdrant-api-key", "api-key"), ("qdrant-api-key", "read-only-api-key")}
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "secret generic qdrant-api-key" in readme and "--from-file=api-key=" in readme
    assert "--from-file=read-only-api-key=" in readme


def test_hpa_scales_triton_on_the_adapters_queue_time_metric(k8s, adapter_rule):
    hpa = one(k8s, "HorizontalPodAutoscaler", "triton")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", one(k8s, "Deployment", "triton")["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == adapter_rule["name"]["as"]
    query = adapter_rule["metricsQuery"].replace("<<.GroupBy>>", "pod").replace(
        "<<.LabelMatchers>>", 'namespace="imgretrieval",pod=~"triton-.*"')
    selectors = promql_selectors(query)
    assert {s.name for s in selectors} == {"nv_inference_queue_duration_us", "nv_inference_request_success"}
    (served,) = [s for s in selectors if s.name == "nv_inference_request_success"]
    assert set(matchers(served)["model"].split("|")) == {spec.ENSEMBLE, spec.CATALOG_ENSEMBLE}  # searches and catalog images
    series = promql_selectors(adapter_rule["seriesQuery"])[0]
    assert set(adapter_rule["resources"]["overrides"]) == {"namespace", "pod"} <= set(matchers(series))
    assert matchers(series)["model"] == spec.ENSEMBLE


def test_qdrant_runs_as_a_cluster_with_replicated_shards(k8s):
    sts = one(k8s, "StatefulSet", "qdrant")
    c = main_container(sts)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert sts["spec"]["replicas"] >= 3 and env["QDRANT__CLUSTER__ENABLED"] == "true"
    p2p = port_of(c, "p2p")
    assert int(env["QDRANT__CLUSTER__P2P__PORT"]) == p2p == 6335
    assert int(env["QDRANT__SERVICE__HTTP_PORT"]) == port_of(c, "http")
    assert int(env["QDRANT__SERVICE__GRPC_PORT"]) == port_of(c, "grpc")
    headless = one(k8s, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert f"qdrant-0.{sts['spec']['serviceName']}:{p2p}" in c["args"][0]
    assert "6335" not in str(one(k8s, "Service", "qdrant")["spec"]["ports"]), "p2p is not on the client Service"
    policy = one(k8s, "NetworkPolicy", "qdrant")["spec"]["ingress"]
    (p2p_rule,) = [r for r in policy if any(p["port"] == p2p for p in r["ports"])]
    assert p2p_rule["from"] == [{"podSelector": {"matchLabels": sts["spec"]["selector"]["matchLabels"]}}]
    storage = [m for m in c["volumeMounts"] if m["mountPath"] == "/qdrant/storage"]
    assert storage and storage[0]["name"] in {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}

    want = json.loads((K8S / "collection.json").read_text())
    assert want["shard_number"] >= 3 and want["replication_factor"] >= 2
    assert 1 <= want["write_consistency_factor"] <= want["replication_factor"]
    assert want["replication_factor"] < want["expected_peers"] == sts["spec"]["replicas"]
    assert want["collection"] == spec.collection_name() and want["alias"] == products.ALIAS
    assert want["vectors"] == {"size": spec.EMBED_DIM, "distance": "Cosine"}
    assert tuple(want["keyword_fields"]) == products.KEYWORD_FIELDS
    job = one(k8s, "Job", "qdrant-create-collection")
    mount = main_container(job)["volumeMounts"][0]["mountPath"]
    (volume,) = pod_spec(job)["volumes"]
    assert set(one(k8s, "ConfigMap", volume["configMap"]["name"])["data"]) == {"create_collection.py", "collection.json"}
    assert main_container(job)["command"][-1] == f"{mount}/create_collection.py"


def _k8s_script(name: str):
    """A standard-library script of deploy/k8s (run in a pod, not installed), loaded as a module."""
    loaded = importlib.util.spec_from_file_location(name, K8S / f"{name}.py")
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


def test_the_collection_job_refuses_an_existing_collection_with_other_settings():
    mismatches = _k8s_script("create_collection").mismatches
    want = json.loads((K8S / "collection.json").read_text())
    have = {"params": {"vectors": dict(want["vectors"]), "shard_number": want["shard_number"],
                       "replication_factor": want["replication_factor"],
                       "write_consistency_factor": want["write_consistency_factor"]}}
    assert mismatches(want, have) == []
    have["params"]["replication_factor"] = 1
    have["params"]["vectors"]["size"] = 512
    assert mismatches(want, have) == [f"replication_factor: wanted {want['replication_factor']}, the collection has 1",
                                      f"vectors.size: wanted {spec.EMBED_DIM}, the collection has 512"]


def test_compose_and_kubernetes_run_the_same_images(compose, k8s):
    assert main_container(one(k8s, "Deployment", "triton"))["image"] == compose["services"]["triton"]["image"]
    assert main_container(one(k8s, "StatefulSet", "qdrant"))["image"] == compose["services"]["qdrant"]["image"]


# --- monitoring ----------------------------------------------------------------------------------------------

def test_prometheus_jobs_scrape_the_metrics_ports(prometheus, compose, k8s, monitors):
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}
    triton_metrics = triton_ports(compose["services"]["triton"]["command"])["metrics"]
    assert jobs["triton"]["static_configs"][0]["targets"] == [f"triton:{triton_metrics}"]
    assert jobs["qdrant"]["static_configs"][0]["targets"] == ["qdrant:6333"]
    secret = jobs["qdrant"]["authorization"]["credentials_file"]
    assert secret == f"/run/secrets/{compose['services']['prometheus']['secrets'][0]}"
    assert compose["secrets"][Path(secret).name]["environment"] == "QDRANT_READ_ONLY_API_KEY"
    (mount,) = [v for v in compose["services"]["prometheus"]["volumes"] if isinstance(v, dict)]
    assert (COMPOSE / mount["source"]).resolve() == MONITORING / "prometheus.yml"
    container_ports = {"triton": triton_metrics, "qdrant": 6333}
    for m in monitors:  # Kubernetes: the same jobs through the Prometheus Operator
        services = [d for d in k8s if d["kind"] == "Service"
                    and m["spec"]["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()]
        assert len(services) == 1, f"ServiceMonitor {m['metadata']['name']} selects {len(services)} Services"
        job = services[0]["metadata"]["labels"][m["spec"]["jobLabel"]]
        assert job in jobs, "the same job label as prometheus.yml, so the dashboard works on both"
        (port,) = [p for p in services[0]["spec"]["ports"] if p["name"] == m["spec"]["endpoints"][0]["port"]]
        workload = [w for w in workloads(k8s) if w["metadata"]["name"] == job][0]
        assert port_of(main_container(workload), port["targetPort"]) == container_ports[job]


def _dashboard_targets(dashboard):
    return [(p, t) for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]


def test_dashboard_promql_names_only_known_metrics(dashboard, prometheus, compose):
    jobs = {j["job_name"] for j in prometheus["scrape_configs"]}
    models = {m.name for m in spec.MODELS} | {e.name for e in spec.ENSEMBLES}
    used = set()
    for panel, target in _dashboard_targets(dashboard):
        for sel in promql_selectors(target["expr"]):
            assert sel.name in KNOWN_METRICS, f"panel {panel['title']!r}: unknown metric {sel.name}"
            labels = matchers(sel)
            assert labels.get("job") in jobs, f"panel {panel['title']!r}: {sel.name} without a known job"
            # a regex matcher (model=~"retrieval|retrieval_catalog") names only served models too
            assert set(labels.get("model", spec.ENSEMBLE).split("|")) <= models, f"panel {panel['title']!r}: model {labels['model']}"
            used.add(sel.name)
    assert {"nv_inference_request_success", "nv_inference_request_failure", "nv_inference_request_summary_us",
            "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us", "nv_gpu_utilization",
            "nv_gpu_memory_used_bytes", "grpc_responses_total", "cluster_peers_total"} <= used
    if used & TRITON_SUMMARIES:  # the summaries exist only with this flag
        assert "--metrics-config=summary_latencies=true" in compose["services"]["triton"]["command"]


def test_dashboard_is_well_formed_and_provisioned(dashboard, compose):
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
            assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
    (var,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert (var["type"], var["query"]) == ("datasource", "prometheus")
    grafana = compose["services"]["grafana"]
    mounts = {Path(v["source"]).name: v["target"] for v in grafana["volumes"] if isinstance(v, dict)}
    (ds,) = load_yaml(MONITORING / "grafana" / "datasources.yaml")[0]["datasources"]
    prom_port = published(compose["services"]["prometheus"])
    assert ds["type"] == "prometheus" and ds["url"] == f"http://prometheus:{next(iter(prom_port))}"
    (provider,) = load_yaml(MONITORING / "grafana" / "dashboards.yaml")[0]["providers"]
    assert str(Path(mounts["dashboard.json"]).parent) == provider["options"]["path"]
    assert mounts["datasources.yaml"].startswith("/etc/grafana/provisioning/datasources/")
    assert mounts["dashboards.yaml"].startswith("/etc/grafana/provisioning/dashboards/")


# --- Triton's liveness probe (deploy/k8s/triton_probe.py; on a real server: tests/test_faults.py) -----------

def test_the_liveness_probe_asks_for_the_ensembles_own_tensors():
    probe = _k8s_script("triton_probe")
    assert set(probe.OUTPUTS) <= {t.name for t in spec.ENSEMBLE_OUTPUTS}
    body, n = probe.infer_request(probe.probe_png())
    header = json.loads(body[:n])
    assert [i["name"] for i in header["inputs"]] == [t.name for t in spec.ENSEMBLE_INPUTS]
    assert header["inputs"][0]["parameters"]["binary_data_size"] == len(body) - n
    png = probe.probe_png()
    from PIL import Image
    with Image.open(io.BytesIO(png)) as im:  # a PNG the server's decoder reads
        assert im.size == (96, 96) and im.mode == "RGB"


class _FakeTriton(http.server.BaseHTTPRequestHandler):
    """The probe's verdicts on answers a real server is hard to make give on demand: busy (503, slow), broken
    answers. The verdict on a real dead stub is checked against tritonserver in tests/test_faults.py."""
    infer: tuple[int, bytes, bool] = (200, b"{}", False)  # status, body, whether to hold the answer back
    live = 200
    release = threading.Event()  # set by the test once the probe has given up on a held answer

    def do_GET(self):
        self.send_response(self.live)
        self.end_headers()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        code, body, hold = self.infer
        if hold:
            self.release.wait(30)
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("live, infer, verdict, said", [
    (200, (200, b'{"outputs": [{"name": "scores"}, {"name": "embedder_id"}]}', False), True, "live: 2 inferences"),
    (200, (503, b'{"error": "Exceeds maximum queue size"}', False), True, "live but busy"),
    (200, (200, b"{}", True), True, "live but busy"),
    (200, (500, b'{"error": "Stub process \'detector_0_0\' is not healthy."}', False), False, "is not healthy"),
    (200, (200, b'{"outputs": [{"name": "scores"}]}', False), False, "lacks ['embedder_id']"),
    (503, (200, b"{}", False), False, "/v2/health/live answered 503"),
])
def test_liveness_probe_verdicts(live, infer, verdict, said):
    probe = _k8s_script("triton_probe")
    handler = type("H", (_FakeTriton,), {"live": live, "infer": infer, "release": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ok, detail = probe.probe(f"http://127.0.0.1:{server.server_address[1]}", timeout=0.5)
    finally:
        handler.release.set()
        server.shutdown()
        server.server_close()
    assert ok is verdict and said in detail, detail
