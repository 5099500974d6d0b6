"""The HTTP route table (service/http/routes.py) drives everything that knows a route: the
mounted app, the guard (which paths are open), the metrics' route label, the OpenAPI
document and BentoML's client's route list. In process, then over real HTTP against the
session's servers (the locked one has API keys)."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.http import ROUTES
from service.http.openapi import client_schema, document
from tests.conftest import GRPC_KEYS

EXAMPLE = {"name": "classifier", "version": "1", "label": "stable", "file": "swagger-ui.css"}


def concrete(path: str) -> str:
    """A path that fills the template `path`."""
    return re.sub(r"{(\w+)(:\w+)?}", lambda match: EXAMPLE[match.group(1)], path)


def test_the_app_answers_every_endpoint_that_has_a_handler():
    served = {(route.path, method) for route in ROUTES.app.routes for method in route.methods - {"HEAD"}}
    ours = {(endpoint.path, endpoint.method) for endpoint in ROUTES.endpoints if endpoint.handler}
    assert served == ours and ("/models", "GET") in served


@pytest.mark.parametrize("endpoint", ROUTES.endpoints, ids=lambda endpoint: endpoint.path)
def test_a_path_is_found_as_its_template(endpoint):
    assert ROUTES.find(concrete(endpoint.path)) is endpoint


@pytest.mark.parametrize("path", ["/models/", "/models/a/b", "/v2/models/a/versions", "/classify/x", "/nope", ""])
def test_other_paths_have_no_endpoint(path):
    assert ROUTES.find(path) is None


def test_the_openapi_documents_the_documented_endpoints():
    spec = document(ROUTES)
    documented = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    assert documented == {(endpoint.path, endpoint.method) for endpoint in ROUTES.endpoints if endpoint.doc}
    assert {("/models", "GET"), ("/models/{name}", "GET"), ("/classify", "POST")} <= documented
    refs = set(re.findall(r"#/components/schemas/(\w+)", str(spec)))
    assert refs <= set(spec["components"]["schemas"]), refs - set(spec["components"]["schemas"])


def test_the_client_gets_a_method_per_api():
    routes = {route["name"]: route for route in client_schema(ROUTES)["routes"]}
    assert {name: route["route"] for name, route in routes.items()} == {
        "classify": "/classify", "generate": "/generate", "interpolate": "/interpolate"}
    assert routes["interpolate"]["output"]["type"] == "file" and routes["classify"]["input"]["root_input"]


# -- over real HTTP ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked(grpc_servers):
    return grpc_servers[1]


def requests_total(server) -> dict[tuple[str, str], float]:
    families = text_string_to_metric_families(server.client.get("/metrics").text)
    return {(sample.labels["method"], sample.labels["code"]): sample.value for family in families
            for sample in family.samples
            if sample.name == "diptych_requests_total" and sample.labels["protocol"] == "http"}


@pytest.mark.slow
def test_the_guard_and_the_metrics_read_the_table(locked):
    """Without a key, every endpoint the table does not open is refused, and counted under
    its template; the open ones answer, uncounted."""
    before = requests_total(locked)
    answers = [(endpoint, locked.client.request(endpoint.method, concrete(endpoint.path)))
               for endpoint in ROUTES.endpoints]
    refused = [endpoint for endpoint, answer in answers if answer.status_code == 401]
    assert refused == [endpoint for endpoint in ROUTES.endpoints if not endpoint.open]
    assert all(answer.headers["WWW-Authenticate"] == "Bearer" for _, answer in answers if answer.status_code == 401)
    after = requests_total(locked)
    counted = {label: after[label] - before.get(label, 0) for label in after if after[label] != before.get(label, 0)}
    assert counted == {(f"{endpoint.method} {endpoint.path}", "401"): 1 for endpoint in ROUTES.endpoints
                       if not endpoint.open}


@pytest.mark.slow
def test_the_served_documents_are_the_tables(locked):
    assert locked.client.get("/docs.json").json() == document(ROUTES)
    assert locked.client.get("/schema.json").json() == client_schema(ROUTES)
    assert locked.client.get("/models", headers={"Authorization": f"Bearer {GRPC_KEYS[0]}"}).status_code == 200
