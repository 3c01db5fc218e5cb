"""Packing: read the model directory, install, render, check, and move the bundle into place."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ersilia_pack.check import MAX_REPORTED, check_app, check_examples
from ersilia_pack.errors import ModelDirError, Problem, RenderError
from ersilia_pack.install import get_backend
from ersilia_pack.install.base import EnvRequest, install
from ersilia_pack.install.cutoff import choose_cutoff
from ersilia_pack.install.index_map import index_map_from_env, map_indexes
from ersilia_pack.install.installer import default_installer, make_installer
from ersilia_pack.install.translate import log_decisions
from ersilia_pack.install.variant import choose_variant
from ersilia_pack.install.venv import COMPLETE, ENVS_DIR
from ersilia_pack.model_dir import ModelSpec, read_model_dir
from ersilia_pack.render import new_tag, render_bundle
from ersilia_pack.runtime.bundle.manifest import MANIFEST, TAG_PATTERN, InstallRecord

logger = logging.getLogger("ersilia_pack")
DEFAULT_KEEP = 3
# Nothing a pack writes may be writable by group or others, whatever the caller's umask
# (the Ersilia client packs under umask 0).
NOT_SHARED = 0o022


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
            prefix = json.loads((bundle / MANIFEST).read_text())["environment"]["prefix"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if prefix:
            used.add(Path(prefix).resolve())
    envs = model_repo / ENVS_DIR
    if envs.is_dir():
        now = time.time()
        for env in envs.iterdir():
            if env.resolve() in used:
                continue
            # an unfinished environment may be another pack's, still installing
            with contextlib.suppress(OSError):
                young = now - env.stat().st_mtime < STALE_PARTIAL_SECONDS
                if not (env / COMPLETE).is_file() and young:
                    continue
            shutil.rmtree(env, ignore_errors=True)
    return removed


def strip_shared_write(root: Path) -> None:
    """Remove group and world write from ``root`` and everything under it (copies keep the
    modes of their source: a model cloned under umask 0 has 0666 files)."""
    for path in [root, *root.rglob("*")]:
        with contextlib.suppress(OSError):
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and mode & NOT_SHARED:
                path.chmod(stat.S_IMODE(mode) & ~NOT_SHARED)


def _run_check(staging: Path, *, strict: bool, spec: ModelSpec) -> list[str]:
    report = check_examples(staging)  # writes what it decided for each API into the manifest
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
    installer: str | None = None,
    as_of: str | None = None,
) -> PackResult:
    """Pack a model directory into ``<repository_root>/<MODEL_ID>/<tag>/``.

    The bundle is built in a hidden folder and renamed into place only once complete, so a
    failed pack leaves earlier bundles untouched and no partial one behind. Structured steps
    install with ``installer`` (uv or pip; by default uv, pip for ``--system``), every step
    resolves as of ``as_of`` (a date, 'latest', or by default the card's ``Last Packaging
    Date``, else the model's last git commit, else its files' newest modification time).
    Everything written is without group or world write, whatever the caller's umask.
    """
    previous = os.umask(NOT_SHARED)
    os.umask(previous | NOT_SHARED)
    try:
        return _pack(
            model_dir,
            backend=backend,
            repository_root=repository_root,
            env_name=env_name,
            variant=variant,
            force=force,
            strict=strict,
            check=check,
            keep=keep,
            installer=installer or default_installer(backend),
            as_of=as_of,
        )
    finally:
        os.umask(previous)


def _pack(
    model_dir: Path,
    *,
    backend: str,
    repository_root: Path | None,
    env_name: str | None,
    variant: str | None,
    force: bool,
    strict: bool,
    check: bool,
    keep: int,
    installer: str,
    as_of: str | None,
) -> PackResult:
    choice = choose_variant(Path(model_dir).expanduser(), variant)
    spec = read_model_dir(model_dir, variant=choice.name)
    for warning in spec.warnings:
        logger.warning("warning: %s", warning)
    cutoff = choose_cutoff(spec.metadata, as_of, model_dir=spec.root)
    index_map = index_map_from_env()
    root = repository_root if repository_root is not None else default_eos() / "repository"
    model_repo = _model_repository(root, spec)
    tool = make_installer(
        installer, near=Path(sys.prefix) if backend == "system" else model_repo.parent
    )
    chosen = get_backend(backend, tool)
    translation = chosen.translate(spec.plan)  # refuses what cannot run before anything does
    created = not model_repo.exists()
    model_repo.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(model_repo)
    tag = new_tag()
    staging = model_repo / f".partial-{tag}"
    try:
        logger.info(
            "packing %s (%s) with --%s, installing with %s",
            spec.model_id,
            spec.slug,
            backend,
            tool.name,
        )
        logger.info("install file: %s (%s)", spec.plan.source or "none", choice.reason)
        logger.info("resolving as of: %s", cutoff.describe())
        log_decisions(translation.decisions)
        plan = map_indexes(translation.plan, index_map)
        request = EnvRequest(
            model_id=spec.model_id,
            repository_dir=model_repo,
            plan=plan,
            env_name=env_name,
            force=force,
            cutoff=cutoff,
            tag=tag,
        )
        prepared = install(chosen, request, cwd=spec.root)
        prefix = prepared.environment.prefix
        if backend == "venv" and prefix and not prepared.reused:
            strip_shared_write(Path(prefix))
        record = InstallRecord(
            source=spec.plan.source,
            python=spec.plan.python,
            steps=[step.display() for step in plan.steps],
            reused_environment=prepared.reused,
            installer=tool.name,
            as_of=cutoff.iso,
            as_of_source=cutoff.source,
            resolved_without_as_of=prepared.without_cutoff,
            variant=choice.label,
            variant_reason=choice.reason,
            conda_translation=[decision.model_dump() for decision in translation.decisions],
        )
        logger.info("rendering the bundle")
        installed = spec.model_copy(update={"plan": plan})
        render_bundle(installed, staging, tag=tag, environment=prepared.environment, install=record)
        warnings = _run_check(staging, strict=strict, spec=spec) if check else []
        if not check:
            check_app(staging)
        shutil.rmtree(staging / "state", ignore_errors=True)
        (staging / "status.json").write_text(json.dumps({"done": True}) + "\n", encoding="utf-8")
        strip_shared_write(staging)
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
    """Validate a model directory only (with the install script ``variant`` picks, see
    :func:`choose_variant`); ModelDirError lists every problem."""
    return read_model_dir(model_dir, variant=choose_variant(Path(model_dir), variant).name)
