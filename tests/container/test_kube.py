"""Kubernetes manifests from `ersilia_pack containerize --kube DIR --no-build`, validated offline
against the Kubernetes schemas that kubernetes-validate ships (KEDA's objects against KEDA's
published CRDs, vendored in tests/data/keda), and read as a cluster would."""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helpers import DEMO_DIR, run_command

from ersilia_pack.kube import card_memory_mib, object_name
from ersilia_pack.model_dir import hash_model_dir
from ersilia_pack.runtime.state.redis_store import GROUP

# A recent release and the newest the package knows, both offline.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
IMAGE = "registry.example.org/ersilia/eos-demo:1.0"
KEDA_CRDS = Path(__file__).parents[1] / "data" / "keda"
# The CEL rules (x-kubernetes-validations) of the vendored CRDs, which jsonschema does not run:
# keda_rules() checks each by hand, and a newer CRD with other rules fails until it does.
KEDA_RULES = {
    "!has(self.minReplicaCount) || self.minReplicaCount <= (has(self.maxReplicaCount)"
    " ? self.maxReplicaCount : 100)"
}


def _closed(schema: Any) -> Any:
    """The schema with unknown fields refused, as a cluster's strict field validation (kubectl's
    default) refuses them, wherever the CRD neither allows nor keeps unknown fields."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if (
        "properties" in closed
        and "additionalProperties" not in closed
        and not closed.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    return closed


def _rules(schema: Any) -> set[str]:
    if isinstance(schema, list):
        return set().union(*(_rules(item) for item in schema)) if schema else set()
    if not isinstance(schema, dict):
        return set()
    found = {rule["rule"] for rule in schema.get("x-kubernetes-validations", [])}
    return found.union(*(_rules(value) for value in schema.values()))


def _keda_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in sorted(KEDA_CRDS.glob("keda.sh_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version["served"]:
                schema = version["schema"]["openAPIV3Schema"]
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


KEDA_SCHEMAS = _keda_schemas()


def validate_keda(document: dict[str, Any]) -> None:
    """Validate a KEDA object against the published CRD of its apiVersion and kind."""
    schema = KEDA_SCHEMAS.get((document["apiVersion"], document["kind"]))
    if schema is None:
        raise AssertionError(f"no KEDA CRD serves {document['apiVersion']} {document['kind']}")
    assert _rules(schema) <= KEDA_RULES, _rules(schema) - KEDA_RULES
    jsonschema.Draft7Validator(_closed(schema)).validate(document)
    name = document["metadata"]["name"]
    assert object_name(name) == name
    spec = document["spec"]
    if "minReplicaCount" in spec:
        assert spec["minReplicaCount"] <= spec.get("maxReplicaCount", 100)


def validate(document: dict[str, Any]) -> None:
    if document["apiVersion"].startswith("keda.sh/"):
        validate_keda(document)
        return
    for version in VERSIONS:
        kubernetes_validate.validate(document, version, strict=True)


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
    assert "create secret generic eos-demo-api-key" in done.stdout
    assert "create secret generic eos-demo-redis --from-literal=password=" in done.stdout
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(out.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            validate(document)
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
        ("StatefulSet", "eos-demo-redis"),
        ("Service", "eos-demo-redis"),
        ("NetworkPolicy", "eos-demo-redis"),
    }
    # Without KEDA the objects name no namespace: they go where kubectl applies them.
    assert all("namespace" not in item["metadata"] for item in objects.values())
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
    redis = objects[("StatefulSet", "eos-demo-redis")]["spec"]["template"]
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
    # Ready on PONG only: not while Redis loads its append-only file (it answers LOADING).
    probe = redis_container["readinessProbe"]["exec"]["command"]
    assert probe == ["sh", "-c", "redis-cli ping | grep -qx PONG"]

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


def test_redis_keeps_its_append_only_file_on_a_volume(tmp_path: Path) -> None:
    objects = manifests(DEMO_DIR, tmp_path / "kube", "--redis-storage", "5Gi")
    redis = objects[("StatefulSet", "eos-demo-redis")]["spec"]
    assert redis["replicas"] == 1
    assert redis["serviceName"] == "eos-demo-redis"
    assert ("Service", redis["serviceName"]) in objects
    (container,) = redis["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "everysec"
    data = args[args.index("--dir") + 1]
    (claim,) = redis["volumeClaimTemplates"]
    assert container["volumeMounts"] == [{"name": claim["metadata"]["name"], "mountPath": data}]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"] == {"requests": {"storage": "5Gi"}}
    # No emptyDir: the data lives on the claim alone.
    assert "volumes" not in redis["template"]["spec"]


def test_keda_scales_the_deployment_on_the_job_stream(tmp_path: Path) -> None:
    out = tmp_path / "kube"
    args = ("--cpu", "3", "--replicas", "0", "--max-replicas", "6", "--namespace", "models")
    done = run_command(
        "ersilia_pack", "containerize", "--model_dir", DEMO_DIR, "-t", IMAGE, "--kube", out,
        "--no-build", "--autoscaler", "keda", *args,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--replicas 0: with no chunk of a job waiting or in flight" in done.stderr
    assert "kubectl -n models create secret generic eos-demo-redis" in done.stdout
    objects = manifests(DEMO_DIR, out, "--autoscaler", "keda", *args)
    assert set(objects) == {
        ("Deployment", "eos-demo"),
        ("Service", "eos-demo"),
        ("ScaledObject", "eos-demo"),
        ("TriggerAuthentication", "eos-demo-redis"),
        ("StatefulSet", "eos-demo-redis"),
        ("Service", "eos-demo-redis"),
        ("NetworkPolicy", "eos-demo-redis"),
    }
    assert not (out / "hpa.yaml").exists()  # KEDA makes its own HPA: never both
    assert {item["metadata"]["namespace"] for item in objects.values()} == {"models"}
    assert objects[("Deployment", "eos-demo")]["spec"]["replicas"] == 0

    scaled = objects[("ScaledObject", "eos-demo")]["spec"]
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "eos-demo",
    }
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (0, 6)
    # The stream and group the server uses: ersilia_pack:<model id>:queue:<model hash>, the
    # hash of the folder the image packs.
    stream = f"ersilia_pack:eos-demo:queue:{hash_model_dir(DEMO_DIR)}"
    targets = {}
    for trigger in scaled["triggers"]:
        assert trigger["type"] == "redis-streams"
        assert trigger["authenticationRef"] == {"name": "eos-demo-redis"}
        metadata = dict(trigger["metadata"])
        # Reached from KEDA's namespace: the Redis Service by its full name, in "models".
        assert metadata.pop("address") == "eos-demo-redis.models.svc:6379"
        assert metadata.pop("databaseIndex") == "0"
        assert metadata.pop("stream") == stream
        assert metadata.pop("consumerGroup") == GROUP
        targets.update(metadata)
    # Three workers: two chunks at once per replica, waiting (lag) and in flight (pending).
    assert targets == {"lagCount": "2", "pendingEntriesCount": "2"}

    # The trigger reads the password of the Secret the replicas and Redis read.
    auth = objects[("TriggerAuthentication", "eos-demo-redis")]["spec"]
    assert auth == {
        "secretTargetRef": [{"parameter": "password", "name": "eos-demo-redis", "key": "password"}]
    }
    # KEDA's operator may reach Redis, from its own namespace; nothing else new may.
    policy = objects[("NetworkPolicy", "eos-demo-redis")]["spec"]
    (rule,) = policy["ingress"]
    assert rule["from"][1] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
        "podSelector": {"matchLabels": {"app": "keda-operator"}},
    }
    assert len(rule["from"]) == 2


def test_the_scaled_object_names_the_stream_and_group_the_server_fills(tmp_path: Path) -> None:
    """A job made by the server's own store, read the way KEDA's triggers read it."""
    import redis

    from ersilia_pack.runtime.state.redis_store import RedisStore
    from ersilia_pack.runtime.state.store import JobRecord

    objects = manifests(DEMO_DIR, tmp_path / "kube", "--autoscaler", "keda")
    triggers = objects[("ScaledObject", "eos-demo")]["spec"]["triggers"]
    stream, group = triggers[0]["metadata"]["stream"], triggers[0]["metadata"]["consumerGroup"]
    with _redis_server(tmp_path) as url:
        store = RedisStore(url, namespace="eos-demo", ttl_seconds=3600)
        job = JobRecord(
            id="0" * 32, api="run", owner="", model_hash=hash_model_dir(DEMO_DIR),
            state="queued", total=5, chunk_size=1, chunks=5, options={},
            created=0.0, updated=0.0,
        )  # fmt: skip
        store.create_job(job, [[f"C{i}"] for i in range(5)])
        client = redis.Redis.from_url(url)
        # What the lagCount and pendingEntriesCount triggers read (XINFO GROUPS, XPENDING).
        store.claim_chunks(job.model_hash, "replica-a", 1, block=0)
        (info,) = client.xinfo_groups(stream)
        assert info["name"].decode() == group
        assert (info["lag"], info["pending"]) == (4, 1)
        assert client.xpending(stream, group)["pending"] == 1
        store.close()
        client.close()


@contextlib.contextmanager
def _redis_server(folder: Path) -> Iterator[str]:
    executable = shutil.which("redis-server")
    assert executable, "redis-server is not on PATH: apt-get install redis-server"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        cwd=folder,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait(timeout=10)


def test_one_autoscaler_at_a_time_in_one_folder(tmp_path: Path) -> None:
    out = tmp_path / "kube"
    manifests(DEMO_DIR, out, "--autoscaler", "keda")
    assert (out / "keda.yaml").exists()
    objects = manifests(DEMO_DIR, out)  # hpa, the default: keda.yaml goes
    assert not (out / "keda.yaml").exists()
    assert ("HorizontalPodAutoscaler", "eos-demo") in objects
    assert not any(kind in ("ScaledObject", "TriggerAuthentication") for kind, _ in objects)


def test_zero_replicas_need_keda(tmp_path: Path) -> None:
    done = run_command(
        "ersilia_pack", "containerize", "--model_dir", DEMO_DIR, "--kube", tmp_path / "kube",
        "--no-build", "--replicas", "0",
    )  # fmt: skip
    assert done.returncode == 1
    assert "0 needs --autoscaler keda" in done.stderr
    assert not (tmp_path / "kube").exists()


def test_a_managed_redis_writes_no_redis(tmp_path: Path) -> None:
    url = "rediss://ersilia@redis.example.org:6380/2"
    out = tmp_path / "kube"
    objects = manifests(DEMO_DIR, out, "--autoscaler", "keda", "--redis-url", url)
    assert sorted(path.name for path in out.iterdir()) == [
        "deployment.yaml",
        "keda.yaml",
        "service.yaml",
    ]
    assert not any(
        name.endswith("-redis") for kind, name in objects if kind != "TriggerAuthentication"
    )
    env = env_of(model_container(objects))
    assert env["ERSILIA_PACK_REDIS_URL"]["value"] == (
        "rediss://ersilia:$(ERSILIA_PACK_REDIS_PASSWORD)@redis.example.org:6380/2"
    )
    for trigger in objects[("ScaledObject", "eos-demo")]["spec"]["triggers"]:
        metadata = trigger["metadata"]
        assert metadata["address"] == "redis.example.org:6380"
        assert (metadata["databaseIndex"], metadata["enableTLS"]) == ("2", "true")
        assert metadata["username"] == "ersilia"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://:hunter2@redis.example.org/0", "put it in the Secret eos-demo-redis"),
        ("http://redis.example.org/0", "is not a redis:// or rediss:// URL"),
        ("redis://redis.example.org/zero", "bad port or database number"),
    ],
)
def test_a_bad_redis_url_is_refused(tmp_path: Path, url: str, message: str) -> None:
    done = run_command(
        "ersilia_pack", "containerize", "--model_dir", DEMO_DIR, "--kube", tmp_path / "kube",
        "--no-build", "--redis-url", url,
    )  # fmt: skip
    assert done.returncode == 1
    assert message in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


def test_the_keda_validator_rejects_what_a_cluster_would(tmp_path: Path) -> None:
    objects = manifests(DEMO_DIR, tmp_path / "kube", "--autoscaler", "keda")
    scaled = objects[("ScaledObject", "eos-demo")]
    numbers = copy.deepcopy(scaled)  # trigger metadata are strings
    numbers["spec"]["triggers"][0]["metadata"]["lagCount"] = 2
    typo = copy.deepcopy(scaled)  # an HPA's field name, unknown to KEDA
    typo["spec"]["minReplicas"] = 1
    no_triggers = copy.deepcopy(scaled)
    no_triggers["spec"]["triggers"] = []
    auth = copy.deepcopy(objects[("TriggerAuthentication", "eos-demo-redis")])
    del auth["spec"]["secretTargetRef"][0]["key"]
    for broken in (numbers, typo, no_triggers, auth):
        with pytest.raises(jsonschema.ValidationError):
            validate_keda(broken)
    upside_down = copy.deepcopy(scaled)
    upside_down["spec"]["minReplicaCount"] = 9
    with pytest.raises(AssertionError):
        validate_keda(upside_down)
