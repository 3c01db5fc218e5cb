"""``ersilia_pack containerize``: a model's image, built on ersilia-pack's base image, and
Kubernetes manifests that run it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import click

from ersilia_pack.commands.common import HELP_OPTIONS, logging_options, setup_logging

DEFAULT_BASE = "python:3.11-slim"  # ersilia_pack.containerize.DEFAULT_BASE
ENGINES = ("docker", "podman")  # ersilia_pack.containerize.ENGINES
AUTOSCALERS = ("hpa", "keda")  # ersilia_pack.kube.AUTOSCALERS


def _megabytes(size: int | None) -> str:
    return "unknown size" if size is None else f"{size / 1e6:.0f} MB"


@click.command("containerize", context_settings=HELP_OPTIONS)
@click.option(
    "--model_dir",
    "--model-dir",
    "model_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="the model directory to build an image of",
)
@click.option("-t", "--tag", default=None, help="the image's name (default: MODEL_ID:latest)")
@click.option(
    "--base",
    default=DEFAULT_BASE,
    show_default=True,
    help="the Python image ersilia-pack's base image builds on",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default=None,
    help="build with this (default: docker or podman, the first that answers)",
)
@click.option(
    "--kube",
    "kube_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="also write Kubernetes manifests for the image into this folder",
)
@click.option(
    "--replicas",
    default=2,
    show_default=True,
    type=click.IntRange(0),
    help="replicas the manifests start with (and scale down to; 0 only with KEDA)",
)
@click.option(
    "--max-replicas",
    "max_replicas",
    default=8,
    show_default=True,
    type=click.IntRange(1),
    help="most replicas the autoscaler runs",
)
@click.option(
    "--cpu",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="CPUs each replica asks for; it runs one worker per CPU",
)
@click.option(
    "--autoscaler",
    type=click.Choice(AUTOSCALERS),
    default="hpa",
    show_default=True,
    help="hpa: on CPU; keda: a KEDA ScaledObject on the job stream (can scale to 0)",
)
@click.option(
    "--namespace",
    default="default",
    show_default=True,
    help="with --autoscaler keda: the namespace the manifests go in",
)
@click.option(
    "--keda-namespace",
    "keda_namespace",
    default="keda",
    show_default=True,
    help="with --autoscaler keda: where KEDA's operator runs (it may reach Redis)",
)
@click.option(
    "--redis-url",
    "redis_url",
    default=None,
    help="a managed Redis (redis:// or rediss://, no password) instead of one in the manifests",
)
@click.option(
    "--redis-storage",
    "redis_storage",
    default="1Gi",
    show_default=True,
    help="the size of the Redis volume",
)
@click.option("--no-build", "no_build", is_flag=True, help="only write the manifests (with --kube)")
@click.option(
    "--gpu",
    is_flag=True,
    help="pack the model with its GPU variant (install_gpu.sh), for hosts with NVIDIA GPUs",
)
@click.option(
    "--no-cache",
    "no_cache",
    is_flag=True,
    help="build the base and model images again from scratch",
)
@logging_options
def containerize_cli(
    model_dir: Path,
    tag: str | None,
    base: str,
    engine: str | None,
    kube_dir: Path | None,
    replicas: int,
    max_replicas: int,
    cpu: int,
    autoscaler: Literal["hpa", "keda"],
    namespace: str,
    keda_namespace: str,
    redis_url: str | None,
    redis_storage: str,
    no_build: bool,
    no_cache: bool,
    gpu: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    """Build a model's image (and ersilia-pack's base image when missing); write manifests."""
    from ersilia_pack.containerize import containerize, default_tag
    from ersilia_pack.kube import KubeOptions, apply_hint, kube_context, write_manifests
    from ersilia_pack.pack import lint

    setup_logging(verbose, quiet)
    if no_build and kube_dir is None:
        raise click.UsageError("--no-build writes manifests only: give --kube DIR too")
    spec = lint(model_dir)
    image = tag or default_tag(spec)
    options = KubeOptions(
        image=image,
        replicas=replicas,
        max_replicas=max_replicas,
        cpu=cpu,
        autoscaler=autoscaler,
        namespace=namespace,
        keda_namespace=keda_namespace,
        redis_url=redis_url,
        redis_storage=redis_storage,
    )
    if kube_dir is not None:
        kube_context(spec, options)  # bad manifest options fail before a build
    if not no_build:
        result = containerize(
            model_dir, tag=image, base=base, engine=engine, no_cache=no_cache, gpu=gpu
        )
        above = (
            None
            if result.base_size is None or result.python_size is None
            else result.base_size - result.python_size
        )
        click.echo(
            f"built {result.tag} with {result.engine}: {_megabytes(result.size)} "
            f"(on {result.base_tag}, whose layers above {base} take {_megabytes(above)})"
        )
        click.echo(f"serve it: {result.run_command()}")
    if kube_dir is not None:
        written = write_manifests(spec, kube_dir, options)
        click.echo(f"wrote {', '.join(path.name for path in written)} into {kube_dir}")
        click.echo(apply_hint(spec.model_id, kube_dir, options))
