"""Kubernetes manifests for a model image: N replicas behind one Service, sharing one Redis.

The Deployment's readiness probe is ``/readyz`` and its liveness probe ``/healthz``; the API key
comes from a Secret the user creates; every replica points ``ERSILIA_PACK_REDIS_URL`` at the
Redis written beside it (a StatefulSet whose append-only file lives on a PersistentVolumeClaim)
or at a managed Redis (``redis_url``), so jobs, chunk claims and the result cache are shared.
Redis asks for a password from a second Secret the user creates, and a NetworkPolicy lets only
the model's pods (and, with KEDA, KEDA's operator) reach it. One autoscaler scales the
replicas: a HorizontalPodAutoscaler on CPU, or a KEDA ScaledObject on the job stream the
replicas read (its waiting chunks, and those in flight), which can go down to zero.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel

from ersilia_pack import templating
from ersilia_pack.containerize import SERVE_UID, ContainerError
from ersilia_pack.errors import ErsiliaPackError
from ersilia_pack.model_dir import ModelSpec
from ersilia_pack.runtime.state.redis_store import GROUP

logger = logging.getLogger("ersilia_pack")

# The server listens on 8080 in a pod: a non-root user may bind it without the sysctl that
# Docker sets for port 80 and Kubernetes does not. The Service answers on 80.
POD_PORT = 8080
SERVER_OVERHEAD_MIB = 256
API_KEY_FIELD = "api-key"
REDIS_PASSWORD_FIELD = "password"
# Named ERSILIA_*, so the server keeps it from the model's processes.
REDIS_PASSWORD_VARIABLE = "ERSILIA_PACK_REDIS_PASSWORD"
AUTOSCALERS = ("hpa", "keda")
# The label KEDA's operator pods carry, in its release manifests and its Helm chart alike.
KEDA_OPERATOR_LABELS = {"app": "keda-operator"}
_MANAGED = "app.kubernetes.io/managed-by: ersilia-pack"
_MEMORY_KEYS = ("memory gb", "memory")
_UNITS_MIB = {
    "": 1024,
    "g": 1024,
    "gb": 1024,
    "gib": 1024,
    "gi": 1024,
    "m": 1,
    "mb": 1,
    "mib": 1,
    "mi": 1,
}


class KubeOptionsError(ErsiliaPackError):
    """Manifest options that do not fit together (replicas, namespaces, a Redis URL)."""

    exit_code = 1


class KubeOptions(BaseModel):
    """How many replicas, how much CPU each, and what to run beside them."""

    image: str
    replicas: int = 2
    max_replicas: int = 8
    cpu: int = 1
    cpu_target: int = 70
    redis_image: str = "redis:7"
    # "hpa": CPU, from --replicas (1 or more); "keda": the job stream, from --replicas (0 or more)
    autoscaler: Literal["hpa", "keda"] = "hpa"
    # With KEDA: the namespace the objects go in (KEDA's operator reaches Redis from its own
    # namespace, by the Service's full name) and the namespace KEDA's operator runs in.
    namespace: str = "default"
    keda_namespace: str = "keda"
    # A managed Redis (redis:// or rediss://, no password: that stays in the Secret); None
    # writes a Redis StatefulSet with a volume of this size.
    redis_url: str | None = None
    redis_storage: str = "1Gi"


class KubeContext(BaseModel):
    """What the manifest templates see."""

    name: str
    model_id: str
    image: str
    replicas: int
    max_replicas: int
    cpu: str
    workers: int
    memory: str | None
    cpu_target: int
    port: int
    uid: int
    repository_dir: str
    secret_name: str
    secret_key: str
    redis_name: str
    redis_image: str
    redis_secret_name: str
    redis_secret_key: str
    redis_password_variable: str
    redis_url: str
    write_redis: bool
    redis_storage: str
    redis_address: str
    redis_database: int
    redis_tls: bool
    redis_username: str | None
    autoscaler: str
    namespace: str | None
    keda_namespace: str
    keda_operator_labels: dict[str, str]
    stream: str
    consumer_group: str
    lanes: int


def object_name(model_id: str) -> str:
    """A Kubernetes object name (a DNS label) for the model: lower case, letters, digits, '-'."""
    name = re.sub(r"[^a-z0-9-]+", "-", model_id.lower()).strip("-")[:40].rstrip("-")
    if not name:
        raise ContainerError(
            f"model id {model_id!r} has no letters or digits to name Kubernetes objects with"
        )
    return name


def card_memory_mib(card: dict[str, Any]) -> int | None:
    """The memory a model needs, from its card's ``Memory Gb`` (a number of GB; ``512 MB`` and
    ``2 GiB`` are read too), in MiB; None when the card has no usable figure."""
    keys = {str(key).strip().lower(): value for key, value in card.items()}
    for key in _MEMORY_KEYS:
        value = keys.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, bool):
            break
        if isinstance(value, (int, float)):
            amount, unit = float(value), ""
        else:
            match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
            if not match or match.group(2).lower() not in _UNITS_MIB:
                logger.warning(
                    "card: %r is not a memory figure (e.g. 'Memory Gb: 4'); "
                    "the manifests set no memory",
                    value,
                )
                return None
            amount, unit = float(match.group(1)), match.group(2).lower()
        if amount <= 0:
            break
        return max(1, math.ceil(amount * _UNITS_MIB[unit]))
    return None


def _check_replicas(options: KubeOptions) -> None:
    low = 0 if options.autoscaler == "keda" else 1
    if options.replicas < low or options.max_replicas < max(1, options.replicas):
        zero = (
            " (0 needs --autoscaler keda: an HPA keeps 1 or more)"
            if low and options.replicas == 0
            else ""
        )
        raise KubeOptionsError(
            f"replicas {options.replicas} to {options.max_replicas}: need {low} <= --replicas "
            f"<= --max-replicas, and --max-replicas >= 1{zero}"
        )


class _RedisTarget(BaseModel):
    url: str
    address: str
    database: int
    tls: bool
    username: str | None


def _redis_target(options: KubeOptions, name: str, secret: str) -> _RedisTarget:
    """Where the replicas (and KEDA) find Redis: the one written beside them, or ``redis_url``,
    with the password of the Secret put in by Kubernetes."""
    password = f"$({REDIS_PASSWORD_VARIABLE})"
    if options.redis_url is None:
        # KEDA's operator runs in another namespace: it needs the Service's full name.
        host = f"{name}-redis.{options.namespace}.svc" if options.autoscaler == "keda" else ""
        host = host or f"{name}-redis"
        return _RedisTarget(
            url=f"redis://:{password}@{name}-redis:6379/0",
            address=f"{host}:6379",
            database=0,
            tls=False,
            username=None,
        )
    parts = urlsplit(options.redis_url)
    example = "(e.g. --redis-url rediss://redis.example.org:6380/0)"
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise KubeOptionsError(
            f"--redis-url {options.redis_url!r} is not a redis:// or rediss:// URL {example}"
        )
    if parts.password is not None:
        raise KubeOptionsError(
            "--redis-url holds a password, which would be written into the manifests: "
            f"leave it out and put it in the Secret {secret} (key {REDIS_PASSWORD_FIELD})"
        )
    try:
        port = parts.port or 6379
        database = int(parts.path.strip("/") or 0)
    except ValueError as error:
        raise KubeOptionsError(
            f"--redis-url {options.redis_url!r}: bad port or database number {example}"
        ) from error
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    user = parts.username or ""
    return _RedisTarget(
        url=f"{parts.scheme}://{user}:{password}@{host}:{port}/{database}",
        address=f"{host}:{port}",
        database=database,
        tls=parts.scheme == "rediss",
        username=parts.username,
    )


def kube_context(spec: ModelSpec, options: KubeOptions) -> KubeContext:
    """The manifests' values for ``spec`` served from ``options.image``."""
    _check_replicas(options)
    name = object_name(spec.model_id)
    keda = options.autoscaler == "keda"
    if keda:
        for label, value in (
            ("--namespace", options.namespace),
            ("--keda-namespace", options.keda_namespace),
        ):
            if object_name(value) != value:
                raise KubeOptionsError(
                    f"{label} {value!r} is not a namespace name (lower-case letters, digits, '-')"
                )
    redis = _redis_target(options, name, f"{name}-redis")
    per_worker = card_memory_mib(spec.metadata)
    # One load-once worker per CPU: the default (every core of the node) would overcommit the
    # pod's memory on a big node.
    workers = options.cpu
    memory = None if per_worker is None else f"{per_worker * workers + SERVER_OVERHEAD_MIB}Mi"
    return KubeContext(
        name=name,
        model_id=spec.model_id,
        image=options.image,
        replicas=options.replicas,
        max_replicas=options.max_replicas,
        cpu=str(options.cpu),
        workers=workers,
        memory=memory,
        cpu_target=options.cpu_target,
        port=POD_PORT,
        uid=SERVE_UID,
        repository_dir=f"/eos/repository/{spec.model_id}",
        secret_name=f"{name}-api-key",
        secret_key=API_KEY_FIELD,
        redis_name=f"{name}-redis",
        redis_image=options.redis_image,
        redis_secret_name=f"{name}-redis",
        redis_secret_key=REDIS_PASSWORD_FIELD,
        redis_password_variable=REDIS_PASSWORD_VARIABLE,
        redis_url=redis.url,
        write_redis=options.redis_url is None,
        redis_storage=options.redis_storage,
        redis_address=redis.address,
        redis_database=redis.database,
        redis_tls=redis.tls,
        redis_username=redis.username,
        autoscaler=options.autoscaler,
        namespace=options.namespace if keda else None,
        keda_namespace=options.keda_namespace,
        keda_operator_labels=KEDA_OPERATOR_LABELS,
        # The stream and group redis_store.py uses: ersilia_pack:<model id>:queue:<model hash>
        # (the image packs this same folder, so its bundle has this hash).
        stream=f"ersilia_pack:{spec.model_id}:queue:{spec.model_hash}",
        consumer_group=GROUP,
        # Chunks a replica computes at once: its workers but the one kept for requests.
        lanes=max(1, workers - 1),
    )


def apply_hint(model_id: str, kube_dir: Path, options: KubeOptions | None = None) -> str:
    """How to apply the manifests: create the two Secrets they read, then apply them."""
    name = object_name(model_id)
    keda = options is not None and options.autoscaler == "keda"
    where = f" -n {options.namespace}" if keda and options is not None else ""
    password = (
        "PASSWORD-OF-THE-MANAGED-REDIS"
        if options is not None and options.redis_url
        else '"$(openssl rand -hex 32)"'
    )
    return (
        f"apply them: kubectl{where} create secret generic {name}-api-key "
        f"--from-literal={API_KEY_FIELD}=KEY && kubectl{where} create secret generic "
        f"{name}-redis --from-literal={REDIS_PASSWORD_FIELD}={password} "
        f"&& kubectl apply -f {kube_dir}"
    )


def manifest_names(options: KubeOptions) -> list[str]:
    """The files written: one autoscaler (``hpa.yaml`` or ``keda.yaml``, never both: KEDA
    makes an HPA of its own), and ``redis.yaml`` unless Redis is managed elsewhere."""
    names = ["deployment.yaml", "service.yaml", f"{options.autoscaler}.yaml"]
    if options.redis_url is None:
        names.append("redis.yaml")
    return names


def render_manifests(spec: ModelSpec, options: KubeOptions) -> dict[str, str]:
    """``{file name: YAML}`` for the Deployment, Service, autoscaler and Redis."""
    context = kube_context(spec, options)
    return {
        name: templating.render(f"kube/{name}.j2", dict(context), error=ContainerError)
        for name in manifest_names(options)
    }


def write_manifests(spec: ModelSpec, out_dir: Path, options: KubeOptions) -> list[Path]:
    """Write the manifests into ``out_dir`` (created when missing); the files written."""
    manifests = render_manifests(spec, options)
    if options.replicas == 0:
        logger.warning(
            "--replicas 0: with no chunk of a job waiting or in flight KEDA stops every "
            "replica, and then nothing answers HTTP (no request, no job submitted) until "
            "something starts one"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # A file of the other choice left from an earlier run would be applied too: an HPA beside
    # KEDA's own, or a Redis nobody uses.
    for stale in ("hpa.yaml", "keda.yaml", "redis.yaml"):
        path = out_dir / stale
        if stale not in manifests and path.is_file() and _MANAGED in path.read_text("utf-8"):
            path.unlink()
            logger.info("removed %s, left from an earlier run", out_dir / stale)
    written = []
    for name, text in manifests.items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
