"""Kubernetes manifests from `ersilia_pack containerize --kube DIR --no-build`, validated offline
against the Kubernetes schemas that kubernetes-validate ships, and read as a cluster would."""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helpers import DEMO_DIR, run_command

from ersilia_pack.kube import card_memory_mib, object_name

# A recent release and the newest the package knows, both offline.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
IMAGE = "registry.example.org/ersilia/eos-demo:1.0"


def demo_with_card(tmp_path: Path, extra: str) -> Path:
    model_dir = shutil.copytree(DEMO_DIR, tmp_path / "eos-demo")
    with (model_dir / "metadata.yml").open("a", encoding="utf-8") as handle:
        handle.write(extra)
    return model_dir


def manifests(model_dir: Path, out: Path, *args: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Write the manifests with the CLI; ``{(kind, name): object}``, each validated."""
    done = run_command(
        "ersilia_pack",
        "containerize",
        "--model_dir",
        model_dir,
        "-t",
        IMAGE,
        "--kube",
        out,
        "--no-build",
        *args,
    )
    assert done.returncode == 0, done.stderr
    assert f"into {out}" in done.stdout
    assert "kubectl create secret generic eos-demo-api-key" in done.stdout
    assert "kubectl create secret generic eos-demo-redis --from-literal=password=" in done.stdout
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(out.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            for version in VERSIONS:
                kubernetes_validate.validate(document, version, strict=True)
            objects[(document["kind"], document["metadata"]["name"])] = document
    return objects


def model_container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    pod = objects[("Deployment", "eos-demo")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dict(container)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container["env"]}


def test_manifests_validate_and_wire_probes_secret_and_redis(tmp_path: Path) -> None:
    model_dir = demo_with_card(tmp_path, "Memory Gb: 2\n")
    objects = manifests(model_dir, tmp_path / "kube", "--replicas", "3", "--max-replicas", "10")
    assert set(objects) == {
        ("Deployment", "eos-demo"),
        ("Service", "eos-demo"),
        ("HorizontalPodAutoscaler", "eos-demo"),
        ("Deployment", "eos-demo-redis"),
        ("Service", "eos-demo-redis"),
        ("NetworkPolicy", "eos-demo-redis"),
    }
    deployment = objects[("Deployment", "eos-demo")]
    assert deployment["spec"]["replicas"] == 3
    container = model_container(objects)
    assert container["image"] == IMAGE
    port = container["ports"][0]
    assert port["name"] == "http"
    assert container["args"][-2:] == ["--port", str(port["containerPort"])]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = env_of(container)
    assert env["ERSILIA_PACK_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "eos-demo-api-key",
        "key": "api-key",
    }
    # The Redis password comes from its Secret, into the URL through a variable defined
    # before it (Kubernetes expands $(NAME) only for those).
    names = [item["name"] for item in container["env"]]
    assert names.index("ERSILIA_PACK_REDIS_PASSWORD") < names.index("ERSILIA_PACK_REDIS_URL")
    assert env["ERSILIA_PACK_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "eos-demo-redis",
        "key": "password",
    }
    assert (
        env["ERSILIA_PACK_REDIS_URL"]["value"]
        == "redis://:$(ERSILIA_PACK_REDIS_PASSWORD)@eos-demo-redis:6379/0"
    )
    assert env["ERSILIA_PACK_WORKERS"]["value"] == "1"
    # 2 GiB for the one worker and 256 MiB for the server, asked for and capped alike.
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "2304Mi"},
        "limits": {"memory": "2304Mi"},
    }
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["allowPrivilegeEscalation"] is False

    # The Service reaches the model's pods; the Redis Service the Redis pod the URL names.
    service = objects[("Service", "eos-demo")]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    redis = objects[("Deployment", "eos-demo-redis")]["spec"]["template"]
    redis_service = objects[("Service", "eos-demo-redis")]["spec"]
    assert redis_service["selector"].items() <= redis["metadata"]["labels"].items()
    assert redis_service["ports"][0]["port"] == 6379
    (redis_container,) = redis["spec"]["containers"]
    assert redis_container["ports"][0]["containerPort"] == 6379

    # Redis asks for the password of the same Secret; its probe (redis-cli) sends it.
    args = redis_container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDISCLI_AUTH)"
    assert env_of(redis_container)["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"] == {
        "name": "eos-demo-redis",
        "key": "password",
    }
    assert redis_container["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]

    # Only the model's pods may reach Redis, on its port alone.
    policy = objects[("NetworkPolicy", "eos-demo-redis")]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= redis["metadata"]["labels"].items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert set(source) == {"podSelector"}  # no namespaceSelector or ipBlock: this namespace
    allowed = source["podSelector"]["matchLabels"]
    assert allowed.items() <= labels.items()
    assert not allowed.items() <= redis["metadata"]["labels"].items()
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]

    hpa = objects[("HorizontalPodAutoscaler", "eos-demo")]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "eos-demo",
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    assert hpa["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        }
    ]


def test_memory_grows_with_the_workers_a_replica_runs(tmp_path: Path) -> None:
    model_dir = demo_with_card(tmp_path, "Memory Gb: 2\n")
    container = model_container(manifests(model_dir, tmp_path / "kube", "--cpu", "2"))
    assert env_of(container)["ERSILIA_PACK_WORKERS"]["value"] == "2"
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "4352Mi"},
        "limits": {"memory": "4352Mi"},
    }


def test_a_card_without_memory_asks_for_cpu_only(tmp_path: Path) -> None:
    container = model_container(manifests(DEMO_DIR, tmp_path / "kube"))
    assert container["resources"] == {"requests": {"cpu": "1"}}


def test_the_validator_rejects_what_a_cluster_would(tmp_path: Path) -> None:
    objects = manifests(DEMO_DIR, tmp_path / "kube")
    broken = copy.deepcopy(objects[("Deployment", "eos-demo")])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    no_port = copy.deepcopy(objects[("Service", "eos-demo")])
    no_port["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(no_port, VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    ("value", "mib"),
    [(4, 4096), (1.5, 1536), ("512 MB", 512), ("2 GiB", 2048), ("3Gi", 3072), ("0", None)],
)
def test_card_memory_figures(value: object, mib: int | None) -> None:
    assert card_memory_mib({"Memory Gb": value}) == mib


def test_a_card_memory_that_is_no_figure_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ersilia_pack"):
        assert card_memory_mib({"Memory Gb": "plenty"}) is None
    assert "'plenty' is not a memory figure" in caplog.text


def test_object_names_are_dns_labels() -> None:
    assert object_name("eos3b5e") == "eos3b5e"
    assert object_name("My_Model.v2") == "my-model-v2"


def test_no_build_needs_a_folder_for_the_manifests() -> None:
    done = run_command("ersilia_pack", "containerize", "--model_dir", DEMO_DIR, "--no-build")
    assert done.returncode == 1
    assert "--no-build writes manifests only: give --kube DIR too" in done.stderr
