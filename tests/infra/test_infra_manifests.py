"""The files in infra/ checked offline by the tools that consume them, or their schemas.

- Kubernetes manifests: the Kubernetes JSON schemas of kubernetes-validate, strict (an
  unknown field is an error), for the oldest and newest Kubernetes versions we target.
- The KubeRay RayCluster: a schema of the ray.io/v1 fields (tests/schemas/, pod templates
  checked against Kubernetes' PodTemplateSpec), and Ray's own KubeRay autoscaler code,
  which turns the RayCluster into node types.
- The Prefect work pool's base job template: Prefect's server-side validation, then
  prefect-kubernetes renders a flow run's Job, which must be a valid Kubernetes Job.
- The `ray up` config: Ray's cluster launcher fills in defaults and validates it.
- The Dockerfile: hadolint. The compose file: the Compose Specification schema.
- No secret is written into any of them: secrets are referenced.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
K8S_VERSIONS = ["1.30", "1.37"]
SECRET_NAMES = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "LUNGCLS_PSEUDONYM_KEY",
    "RAY_AUTH_TOKEN",
    "PREFECT_API_KEY",
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_PASSWORD",
}
BIN = Path(sys.executable).parent


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


DOCUMENTS = _documents()
KUBERNETES_DOCS = [(name, doc) for name, doc in DOCUMENTS if doc["kind"] != "RayCluster"]


def _raycluster() -> dict[str, Any]:
    (doc,) = [doc for _, doc in DOCUMENTS if doc["kind"] == "RayCluster"]
    return copy.deepcopy(doc)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "doc"), KUBERNETES_DOCS, ids=[n for n, _ in KUBERNETES_DOCS])
def test_kubernetes_manifests_match_the_kubernetes_schemas(
    name: str, doc: dict[str, Any], version: str
) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_manifests_hold_what_the_readme_says() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in DOCUMENTS}
    assert {
        ("Namespace", "lungcls"),
        ("ConfigMap", "lungcls-config"),
        ("RayCluster", "lungcls"),
        ("Deployment", "lungcls-prefect-worker"),
        ("ServiceAccount", "lungcls-prefect-worker"),
        ("Role", "lungcls-prefect-worker"),
        ("RoleBinding", "lungcls-prefect-worker"),
    } <= kinds
    assert all(
        doc["metadata"].get("namespace") == "lungcls"
        for _, doc in DOCUMENTS
        if doc["kind"] != "Namespace"
    )


def _raycluster_validator(version: str) -> jsonschema.Draft202012Validator:
    """The RayCluster schema, its Kubernetes types resolved to kubernetes-validate's."""
    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    full = {v for v in kubernetes_validate.utils.all_versions() if v.startswith(f"{version}.")}
    definitions = folder / f"v{full.pop()}-local-strict" / "_definitions.json"
    schema = json.loads((REPO / "tests" / "schemas" / "raycluster-ray-v1.json").read_text())
    registry = Registry().with_resource(
        "https://kubernetes.io/api/_definitions.json",
        Resource.from_contents(json.loads(definitions.read_text())),
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_raycluster_matches_the_kuberay_schema(version: str) -> None:
    _raycluster_validator(version).validate(_raycluster())


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda rc: rc["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "0"),
        (lambda rc: rc["spec"]["workerGroupSpecs"][0].update({"minReplica": 1}), "minReplica"),
        (lambda rc: rc["spec"]["workerGroupSpecs"][1].pop("groupName"), "groupName"),
        (
            lambda rc: rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].pop(
                "name"
            ),
            "name",
        ),
        (lambda rc: rc["spec"]["autoscalerOptions"].update({"upscalingMode": "Fast"}), "Fast"),
    ],
    ids=["int-start-param", "misspelt-field", "no-group-name", "nameless-container", "bad-enum"],
)
def test_raycluster_schema_rejects_what_kuberay_rejects(change: Any, error: str) -> None:
    """The schema is no formality: mistakes the operator's API server refuses fail here."""
    broken = _raycluster()
    change(broken)
    with pytest.raises(jsonschema.ValidationError, match=error):
        _raycluster_validator(K8S_VERSIONS[-1]).validate(broken)


def test_ray_autoscaler_reads_head_cpu_and_gpu_groups_from_the_raycluster() -> None:
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    config = _derive_autoscaling_config_from_ray_cr(_raycluster())
    types = config["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0  # nothing scheduled on the head
    assert types["cpu"]["resources"]["CPU"] == 8 and "GPU" not in types["cpu"]["resources"]
    assert (types["cpu"]["min_workers"], types["cpu"]["max_workers"]) == (0, 10)
    assert types["gpu"]["resources"]["GPU"] == 1
    assert (types["gpu"]["min_workers"], types["gpu"]["max_workers"]) == (0, 4)
    assert config["idle_timeout_minutes"] == 5


def test_every_ray_and_worker_pod_reads_settings_and_secrets_by_reference() -> None:
    rc = _raycluster()["spec"]
    templates = [rc["headGroupSpec"]["template"]] + [g["template"] for g in rc["workerGroupSpecs"]]
    for template in templates:
        (container,) = template["spec"]["containers"]
        sources = [next(iter(s.values()))["name"] for s in container["envFrom"]]
        assert sources == ["lungcls-config", "lungcls-s3", "lungcls-pseudonym", "lungcls-ray-auth"]
        assert container["securityContext"]["runAsNonRoot"] is True
    auth = {e["name"]: e for e in rc["autoscalerOptions"]["env"]}
    assert auth["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "lungcls-ray-auth"


def _walk(node: Any) -> list[Any]:
    """Every dict and string inside a parsed document."""
    found = [node]
    if isinstance(node, dict):
        for value in node.values():
            found += _walk(value)
    elif isinstance(node, list):
        for value in node:
            found += _walk(value)
    return found


def _infra_documents() -> list[tuple[str, Any]]:
    docs: list[tuple[str, Any]] = [(name, doc) for name, doc in DOCUMENTS]
    for path in [INFRA / "ray" / "cluster.yaml", INFRA / "local" / "compose.yaml"]:
        docs.append((path.name, yaml.safe_load(path.read_text())))
    docs.append(("base-job-template", json.loads(_template_path().read_text())))
    return docs


def test_no_secret_is_written_into_infra() -> None:
    """Secret variables are only ever references: a Secret, a compose variable, a file."""
    for name, doc in _infra_documents():
        for node in _walk(doc):
            if isinstance(node, dict):
                if str(node.get("name")) in SECRET_NAMES:  # Kubernetes env entries
                    assert "valueFrom" in node and "value" not in node, (name, node)
                for key, value in node.items():
                    if key in SECRET_NAMES:  # compose environment maps
                        assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), (name, key)
            if isinstance(node, str):
                assert not re.search(r"(PASSWORD|SECRET|TOKEN|_KEY)[A-Z_]*=\w", node), (name, node)
    config = next(doc for name, doc in DOCUMENTS if doc["kind"] == "ConfigMap")
    assert not SECRET_NAMES & set(config["data"])
    assert not list(INFRA.rglob("*.pem")) and not list(INFRA.rglob(".env"))


def _template_path() -> Path:
    return K8S / "work-pool" / "base-job-template.json"


def test_work_pool_template_renders_a_valid_kubernetes_job() -> None:
    """Prefect's own code: the server's template validation, then prefect-kubernetes'
    rendering of a flow run's Job, as the worker does it before submitting the Job."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads(_template_path().read_text())
    validate_base_job_template(template)
    # An API nobody listens on: the template references no blocks or variables, so
    # rendering must not need the API (a reference would fail here).
    with temporary_settings(updates={PREFECT_API_URL: "http://prefect-server.prefect:4200/api"}):
        configuration = asyncio.run(
            KubernetesWorkerJobConfiguration.from_template_and_values(template, {})
        )
        configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="calm-otter"))
    job = copy.deepcopy(configuration.job_manifest)

    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RAY_ADDRESS"] == "lungcls-head-svc.lungcls.svc.cluster.local:6379"
    assert env["PREFECT_API_URL"] == "http://prefect-server.prefect:4200/api"
    assert container["args"][:3] == ["prefect", "flow-run", "execute"]
    assert 'ray start --address="$RAY_ADDRESS" --num-cpus=0' in container["command"][2]
    assert job["metadata"]["namespace"] == "lungcls"

    # prefect-kubernetes insists on these two Job fields inside the pod spec, where
    # Kubernetes ignores them with a warning; anything else must be schema-valid.
    pod = job["spec"]["template"]["spec"]
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)


def test_ray_up_config_is_accepted_by_the_cluster_launcher() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    types = config["available_node_types"]
    assert set(types) == {"head", "cpu_worker", "gpu_worker"}
    assert types["head"]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["docker"]["worker_image"].endswith("-cu128")
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]

    raw["available_node_types"]["cpu_worker"]["min_wrokers"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_wrokers"):
        validate_config(prepare_config(raw))


def test_dockerfile_passes_hadolint() -> None:
    dockerfile = INFRA / "docker" / "Dockerfile"
    lint = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    text = dockerfile.read_text()
    assert re.search(r"^USER 1000:1000$", text, re.M)  # numeric: runAsNonRoot can check it
    assert "-c constraints.txt" in text and "--constraint constraints.txt torch" in text
    assert "ARG TORCH_VARIANT=cpu" in text
    assert not re.search(r"^(ENV|ARG) .*(KEY|SECRET|PASSWORD|TOKEN)", text, re.M)


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint is live: a root image with unpinned pip installs fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install ray\n")
    lint = subprocess.run([str(BIN / "hadolint"), "--no-color", str(bad)], capture_output=True)
    assert lint.returncode != 0 and b"DL3013" in lint.stdout and b"DL3007" in lint.stdout


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"  # everything out, then only what the image needs back in
    assert {"!lungcls/", "!flows/", "!deployments/", "!data_contracts/"} <= set(rules)


def test_compose_file_follows_the_compose_spec_and_has_the_stack() -> None:
    path = INFRA / "local" / "compose.yaml"
    check = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    services = yaml.safe_load(path.read_text())["services"]
    assert {"minio", "postgres", "prefect-server", "ray-head", "ray-worker"} <= set(services)
    assert "postgresql+asyncpg://" in str(services["prefect-server"]["environment"])
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published)
    images = [s["image"] for s in services.values()]
    assert not any(i.endswith(":latest") or ":" not in i for i in images)


def test_prefect_yaml_loads_and_matches_the_image_and_the_kubernetes_worker() -> None:
    """deployments/prefect.yaml's container variants run in this image with this worker."""
    prefect_yaml = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    for deployment in prefect_yaml["deployments"]:
        path, function = deployment["entrypoint"].split(":")
        assert f"def {function}(" in (REPO / path).read_text(), deployment["entrypoint"]
    (step,) = prefect_yaml["definitions"]["container_pull"]
    workdir = re.search(r"^WORKDIR (\S+)$", (INFRA / "docker" / "Dockerfile").read_text(), re.M)
    assert workdir and step["prefect.deployments.steps.set_working_directory"]["directory"] == (
        workdir.group(1)
    )
    pool = prefect_yaml["definitions"]["work_pools"]["kubernetes"]["name"]
    worker = next(doc for _, doc in DOCUMENTS if doc["kind"] == "Deployment")
    command = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--pool") + 1] == pool
    # Flow runs use the image the Kubernetes worker and the Ray nodes run.
    image = worker["spec"]["template"]["spec"]["containers"][0]["image"]
    for variant in ("docker", "kubernetes"):
        pool_variables = prefect_yaml["definitions"]["work_pools"][variant]["job_variables"]
        assert pool_variables["image"] == image, variant
