"""The bulk jobs' Kubernetes manifests (deploy/k8s/batch/, docs/batch.md), checked with the
real tools as the service's are (tests/test_deploy_manifests.py, whose helpers this reuses):
`kubernetes-validate --strict` for the built-in kinds, KubeRay's own RayJob schema (vendored
in tests/schemas/, its commit named there) for the RayJob, kubernetes-validate again for the
pod templates the RayJob embeds, checkov, and the batch CLI's own parser for the commands."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from service.batch.cli import parser
from tests.conftest import ROOT, unavailable
from tests.test_deploy_manifests import ALLOWED_SKIPS, K8S, KUBERNETES_VALIDATE, checkov, load_yaml, run

BATCH = K8S / "batch"
# An object's metadata as these manifests write it (strict: a misspelt key is refused).
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
    "name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STRING_MAP, "annotations": _STRING_MAP}}
RAYJOB_SCHEMA = ROOT / "tests" / "schemas" / "kuberay_rayjob_v1.yaml"


def kubernetes_validate(path: Path) -> str:
    if not KUBERNETES_VALIDATE.exists():
        unavailable(f"{KUBERNETES_VALIDATE} is missing: make install (PyPI kubernetes-validate)")
    result = run(KUBERNETES_VALIDATE, "--strict", path)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def strict(schema: dict) -> dict:
    """The CRD's schema, refusing unknown fields as `kubectl apply --validate=strict` does (the API
    server would otherwise drop a misspelt field without a word)."""
    schema = copy.deepcopy(schema)
    if schema.get("type") == "object" and "properties" in schema:
        schema.setdefault("additionalProperties", False)
    for key in ("properties",):
        for name, child in schema.get(key, {}).items():
            schema[key][name] = strict(child)
    if isinstance(schema.get("items"), dict):
        schema["items"] = strict(schema["items"])
    return schema


def rayjob_schema() -> dict:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
            "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
                           "metadata": _METADATA, "spec": strict(load_yaml(RAYJOB_SCHEMA)["spec"])}}


def rayjob() -> dict:
    return load_yaml(BATCH / "rayjob.yaml")


def pod_templates(job: dict) -> dict[str, dict]:
    cluster = job["spec"]["rayClusterSpec"]
    groups = {f"worker group {group['groupName']}": group["template"] for group in cluster["workerGroupSpecs"]}
    return {"head": cluster["headGroupSpec"]["template"], **groups}


def test_built_in_kinds_pass_kubernetes_validate_strict():
    for name, kinds in (("data.yaml", ("namespace", "persistentvolumeclaim")),
                        ("indexed-job.yaml", ("job", "networkpolicy"))):
        output = kubernetes_validate(BATCH / name)
        assert all(f"passed for resource {kind}/" in output for kind in kinds), output


def test_rayjob_matches_kuberays_schema_and_a_misspelt_field_does_not(tmp_path):
    jsonschema.Draft7Validator(rayjob_schema()).validate(rayjob())
    for path, value in ((("spec", "shutdownAfterJobFinish"), True),
                        (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "replica"), 2),
                        (("spec", "ttlSecondsAfterFinished"), "ten minutes")):
        bad = rayjob()
        target = bad
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft7Validator(rayjob_schema()).validate(bad)


def test_rayjobs_pod_templates_are_valid_kubernetes_pod_templates(tmp_path):
    """The schema above leaves the embedded PodTemplateSpecs to Kubernetes' own schema."""
    documents = [{"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"template-{i}"}, "template": t}
                 for i, t in enumerate(pod_templates(rayjob()).values())]
    (tmp_path / "templates.yaml").write_text(yaml.safe_dump_all(documents))
    output = kubernetes_validate(tmp_path / "templates.yaml")
    assert output.count("passed for resource podtemplate/") == len(documents)


def arguments(command: list[str]):
    return parser().parse_args(command)


def test_the_indexed_job_runs_one_shard_per_index_and_resumes_on_retry():
    job, policy = yaml.safe_load_all((BATCH / "indexed-job.yaml").read_text())
    spec = job["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"][-2:] == ["-m", "service.batch"]
    args = arguments([arg.replace("$(SHARD_INDEX)", "1") for arg in container["args"]])
    assert args.command == "classify" and args.shard == f"1/{spec['completions']}"
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"]
    assert spec["backoffLimitPerIndex"] >= 1 and spec["template"]["spec"]["restartPolicy"] == "Never"
    (index,) = [env for env in container["env"] if env["name"] == "SHARD_INDEX"]
    assert index["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-completion-index']"
    interpreters = {env["name"]: env["value"] for env in container["env"] if "value" in env}["DIPTYCH_INTERPRETERS"]
    assert interpreters == container["resources"]["limits"]["cpu"]
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert str(args.out).startswith("/data/") and not mounts["/data"].get("readOnly")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert policy["spec"]["ingress"] == policy["spec"]["egress"] == []
    namespace, volume = yaml.safe_load_all((BATCH / "data.yaml").read_text())
    assert {job["metadata"]["namespace"], volume["metadata"]["namespace"], rayjob()["metadata"]["namespace"]} == {
        namespace["metadata"]["name"]}
    claim = volume["metadata"]["name"]
    assert {v["persistentVolumeClaim"]["claimName"] for v in spec["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v} == {claim}


def test_the_rayjob_runs_the_batch_cli_on_ray_with_a_replica_per_worker():
    job = rayjob()
    args = arguments(shlex.split(job["spec"]["entrypoint"])[3:])
    assert shlex.split(job["spec"]["entrypoint"])[:3] == ["python", "-m", "service.batch"]
    assert args.engine == "ray" and args.address is None  # a RayJob's driver finds the cluster in RAY_ADDRESS
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"  # the pin of the ray extra
    assert "RAY_USAGE_STATS_ENABLED" in job["spec"]["runtimeEnvYAML"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert group["rayStartParams"]["num-cpus"] == str(args.cpus_per_actor) == container["resources"]["limits"]["cpu"]
    for where, template in pod_templates(job).items():
        (container,) = template["spec"]["containers"]
        assert {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"} in container["env"], where
        mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
        assert {"/data", "/tmp", "/dev/shm"} <= set(mounts), where
        assert bool(mounts["/data"].get("readOnly")) == (where != "head"), where  # only the driver writes
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True, where
    assert str(args.out).startswith("/data/") and str(args.source).startswith("/data/")


def test_checkov_passes_the_indexed_job_with_every_skip_explained(tmp_path):
    report = checkov(BATCH / "indexed-job.yaml")
    assert not report["results"]["failed_checks"], [(c["check_id"], c["check_name"])
                                                    for c in report["results"]["failed_checks"]]
    skipped = report["results"]["skipped_checks"]
    assert {check["check_id"] for check in skipped} <= ALLOWED_SKIPS
    assert all(len(check["check_result"].get("suppress_comment") or "") > 20 for check in skipped)
