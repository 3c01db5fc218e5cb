"""Kubernetes manifests for a model image: N replicas behind one Service, sharing one Redis.

The Deployment's readiness probe is ``/readyz`` and its liveness probe ``/healthz``; the API key
comes from a Secret the user creates; every replica points ``ERSILIA_PACK_REDIS_URL`` at the
Redis written beside it, so jobs, chunk claims and the result cache are shared. Redis asks for
a password from a second Secret the user creates, and a NetworkPolicy lets only the model's
pods reach it. A HorizontalPodAutoscaler scales the replicas on CPU.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ersilia_pack.containerize import SERVE_UID, ContainerError, render_file
from ersilia_pack.model_dir import ModelSpec

logger = logging.getLogger("ersilia_pack")

# The server listens on 8080 in a pod: a non-root user may bind it without the sysctl that
# Docker sets for port 80 and Kubernetes does not. The Service answers on 80.
POD_PORT = 8080
SERVER_OVERHEAD_MIB = 256
API_KEY_FIELD = "api-key"
REDIS_PASSWORD_FIELD = "password"
# Named ERSILIA_*, so the server keeps it from the model's processes.
REDIS_PASSWORD_VARIABLE = "ERSILIA_PACK_REDIS_PASSWORD"
MANIFESTS = ("deployment.yaml", "service.yaml", "hpa.yaml", "redis.yaml")
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


class KubeOptions(BaseModel):
    """How many replicas, how much CPU each, and what to run beside them."""

    image: str
    replicas: int = 2
    max_replicas: int = 8
    cpu: int = 1
    cpu_target: int = 70
    redis_image: str = "redis:7"


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


def kube_context(spec: ModelSpec, options: KubeOptions) -> KubeContext:
    """The manifests' values for ``spec`` served from ``options.image``."""
    if options.replicas < 1 or options.max_replicas < options.replicas:
        raise ContainerError(
            f"replicas {options.replicas} to {options.max_replicas}: need 1 <= --replicas "
            "<= --max-replicas"
        )
    name = object_name(spec.model_id)
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
        redis_url=f"redis://:$({REDIS_PASSWORD_VARIABLE})@{name}-redis:6379/0",
    )


def apply_hint(model_id: str, kube_dir: Path) -> str:
    """How to apply the manifests: create the two Secrets they read, then apply them."""
    name = object_name(model_id)
    return (
        f"apply them: kubectl create secret generic {name}-api-key "
        f"--from-literal={API_KEY_FIELD}=KEY && kubectl create secret generic {name}-redis "
        f'--from-literal={REDIS_PASSWORD_FIELD}="$(openssl rand -hex 32)" '
        f"&& kubectl apply -f {kube_dir}"
    )


def render_manifests(spec: ModelSpec, options: KubeOptions) -> dict[str, str]:
    """``{file name: YAML}`` for the Deployment, Service, HPA and Redis."""
    context = kube_context(spec, options)
    return {name: render_file(f"kube/{name}.j2", context) for name in MANIFESTS}


def write_manifests(spec: ModelSpec, out_dir: Path, options: KubeOptions) -> list[Path]:
    """Write the manifests into ``out_dir`` (created when missing); the files written."""
    manifests = render_manifests(spec, options)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in manifests.items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
