"""Packing: read the model directory, install, render, check, and move the bundle into place."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ersilia_pack.check import MAX_REPORTED, check_app, check_examples
from ersilia_pack.errors import ModelDirError, Problem, RenderError
from ersilia_pack.install import get_backend
from ersilia_pack.install.base import EnvRequest, install
from ersilia_pack.install.venv import ENVS_DIR
from ersilia_pack.model_dir import ModelSpec, read_model_dir
from ersilia_pack.render import new_tag, render_bundle
from ersilia_pack.runtime.bundle.manifest import MANIFEST, TAG_PATTERN, InstallRecord

logger = logging.getLogger("ersilia_pack")
DEFAULT_KEEP = 3


@dataclass
class PackResult:
    """Where the new bundle is, and what the pack noticed on the way."""

    bundle_dir: Path
    model_id: str
    tag: str
    warnings: list[str] = field(default_factory=list)


def default_eos() -> Path:
    return Path(os.environ.get("EOS", Path.home() / "eos")).expanduser()


def _model_repository(repository_root: Path, spec: ModelSpec) -> Path:
    root = repository_root.expanduser().resolve()
    target = (root / spec.model_id).resolve()
    if target.parent != root:
        raise ModelDirError(
            [
                Problem(
                    spec.metadata_file,
                    f"'Identifier' {spec.model_id!r} would escape the repository folder",
                )
            ]
        )
    return target


def _bundles(model_repo: Path) -> list[Path]:
    return sorted(p for p in model_repo.iterdir() if TAG_PATTERN.match(p.name) and p.is_dir())


STALE_PARTIAL_SECONDS = 3600


def _remove_stale_partials(model_repo: Path) -> None:
    """Remove staging folders a killed pack left behind (an hour old: no pack still uses them)."""
    now = time.time()
    for partial in model_repo.glob(".partial-*"):
        with contextlib.suppress(OSError):
            if now - partial.stat().st_mtime > STALE_PARTIAL_SECONDS:
                logger.info("removing %s, left by an interrupted pack", partial.name)
                shutil.rmtree(partial, ignore_errors=True)


def prune(model_repo: Path, keep: int) -> list[Path]:
    """Remove bundles beyond the newest ``keep``, and environments no bundle uses any more."""
    bundles = _bundles(model_repo)
    removed = bundles[:-keep] if keep > 0 else []
    for old in removed:
        shutil.rmtree(old, ignore_errors=True)
    used: set[Path] = set()
    for bundle in _bundles(model_repo):
        try:
            manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
            prefix = manifest["environment"]["prefix"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if prefix:
            used.add(Path(prefix).resolve())
    envs = model_repo / ENVS_DIR
    if envs.is_dir():
        for env in envs.iterdir():
            if env.resolve() not in used:
                shutil.rmtree(env, ignore_errors=True)
    return removed


def _run_check(staging: Path, *, strict: bool, spec: ModelSpec) -> list[str]:
    report = check_examples(staging)  # records warm and serial APIs in the manifest
    problems = report.failures + report.differences
    if not problems:
        if report.checked:
            logger.info("example check passed for %s", ", ".join(report.checked))
        return []
    shown = problems[:MAX_REPORTED]
    more = len(problems) - len(shown)
    text = "\n".join(f"  - {line}" for line in shown) + (f"\n  - ... {more} more" if more else "")
    if strict or report.failures:
        hint = "".join(f"\n  likely cause: {pointer.warning()}" for pointer in spec.lfs_pointers)
        raise RenderError(f"the packed model does not reproduce its examples:\n{text}{hint}")
    logger.warning("the packed model's output differs from its example output:\n%s", text)
    return shown


def pack(
    model_dir: Path,
    *,
    backend: str = "venv",
    repository_root: Path | None = None,
    env_name: str | None = None,
    variant: str | None = None,
    force: bool = False,
    strict: bool = False,
    check: bool = True,
    keep: int = DEFAULT_KEEP,
) -> PackResult:
    """Pack a model directory into ``<repository_root>/<MODEL_ID>/<tag>/``.

    The bundle is built in a hidden folder and renamed into place only once complete, so a
    failed pack leaves earlier bundles untouched and no partial one behind.
    """
    spec = read_model_dir(model_dir, variant=variant)
    for warning in spec.warnings:
        logger.warning("warning: %s", warning)
    installer = get_backend(backend)
    installer.check(spec.plan)
    root = repository_root if repository_root is not None else default_eos() / "repository"
    model_repo = _model_repository(root, spec)
    created = not model_repo.exists()
    model_repo.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(model_repo)
    tag = new_tag()
    staging = model_repo / f".partial-{tag}"
    try:
        logger.info("packing %s (%s) with --%s", spec.model_id, spec.slug, backend)
        request = EnvRequest(
            model_id=spec.model_id,
            repository_dir=model_repo,
            plan=spec.plan,
            env_name=env_name,
            force=force,
        )
        prepared = install(installer, request, cwd=spec.root)
        record = InstallRecord(
            python=spec.plan.python,
            steps=[step.display() for step in spec.plan.steps],
            reused_environment=prepared.reused,
        )
        logger.info("rendering the bundle")
        render_bundle(spec, staging, tag=tag, environment=prepared.environment, install=record)
        warnings = _run_check(staging, strict=strict, spec=spec) if check else []
        if not check:
            check_app(staging)
        shutil.rmtree(staging / "state", ignore_errors=True)
        (staging / "status.json").write_text(json.dumps({"done": True}) + "\n", encoding="utf-8")
        final = model_repo / tag
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not _bundles(model_repo):
            shutil.rmtree(model_repo, ignore_errors=True)
        raise
    prune(model_repo, keep)
    logger.debug("packed %s into %s", spec.model_id, final)
    return PackResult(bundle_dir=final, model_id=spec.model_id, tag=tag, warnings=warnings)


def lint(model_dir: Path, *, variant: str | None = None) -> ModelSpec:
    """Validate a model directory only; ModelDirError lists every problem."""
    return read_model_dir(model_dir, variant=variant)
