"""Package indexes an install step names itself, and mirrors for those this machine cannot reach.

A step such as ``pip install torch --index-url https://download.pytorch.org/whl/cpu`` goes to
its own index, whatever ``UV_DEFAULT_INDEX`` or ``PIP_INDEX_URL`` say. ``ERSILIA_PACK_INDEX_MAP``
(comma-separated ``FROM=TO`` pairs) rewrites such URLs in every step before it runs; a step
that fails because an index could not be reached is reported with the host and this setting.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from ersilia_pack.errors import InstallError, PlanError
from ersilia_pack.install.plan import InstallPlan, InstallStep

logger = logging.getLogger("ersilia_pack")

INDEX_MAP_VARIABLE = "ERSILIA_PACK_INDEX_MAP"
# pip's and uv's options that name an index or a page of links.
_INDEX_FLAGS = (
    "--index-url",
    "-i",
    "--extra-index-url",
    "--find-links",
    "-f",
    "--index",
    "--default-index",
)
_URL = re.compile(r"https?://[^\s'\"`<>),;]+")
_FLAGGED_URL = re.compile(
    r"(?:^|\s)(?:" + "|".join(re.escape(flag) for flag in _INDEX_FLAGS) + r")(?:=|\s+)['\"]?"
    r"(https?://[^\s'\"`]+)"
)
# What uv and pip print when a host cannot be reached (no DNS answer, refused, no route).
_UNREACHABLE = re.compile(
    r"dns error|failed to lookup address|Name or service not known|"
    r"Temporary failure in name resolution|nodename nor servname|Could not resolve host|"
    r"Connection refused|Failed to establish a new connection|tcp connect error|"
    r"Network is unreachable|No route to host|ConnectTimeoutError|connection timed out|"
    r"error sending request for url",
    re.IGNORECASE,
)


def parse_index_map(text: str) -> dict[str, str]:
    """``FROM=TO[,FROM=TO...]`` as a mapping; a PlanError naming the bad pair otherwise."""
    mapping: dict[str, str] = {}
    for pair in text.split(","):
        pair = pair.strip()
        if not pair:
            continue
        source, equals, target = pair.partition("=")
        source, target = source.strip().rstrip("/"), target.strip().rstrip("/")
        if not equals or not _URL.fullmatch(source) or not _URL.fullmatch(target):
            raise PlanError(
                f"{INDEX_MAP_VARIABLE}: {pair!r} is not FROM=TO with two http(s) URLs "
                f"(e.g. {INDEX_MAP_VARIABLE}="
                "'https://download.pytorch.org/whl/cpu=https://mirror.example/whl/cpu')"
            )
        mapping[source] = target
    return mapping


def index_map_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The mapping ``ERSILIA_PACK_INDEX_MAP`` gives (empty when unset)."""
    environ = os.environ if environ is None else environ
    return parse_index_map(environ.get(INDEX_MAP_VARIABLE, ""))


def _rewrite_text(text: str, mapping: Mapping[str, str]) -> str:
    for source, target in mapping.items():
        # the URL itself or a path under it, not another URL that merely starts the same
        pattern = re.compile(re.escape(source) + r"(?=$|[/\s'\"`])")
        text = pattern.sub(target.replace("\\", "\\\\"), text)
    return text


def map_indexes(plan: InstallPlan, mapping: Mapping[str, str]) -> InstallPlan:
    """The plan with every mapped index URL in its steps replaced (each change logged)."""
    if not mapping:
        return plan
    steps: list[InstallStep] = []
    for step in plan.steps:
        args = [_rewrite_text(arg, mapping) for arg in step.args]
        script = _rewrite_text(step.script, mapping)
        if args != step.args or script != step.script:
            for source, target in mapping.items():
                if _rewrite_text(step.display(), {source: target}) != step.display():
                    logger.info(
                        "step %s: index %s -> %s (%s)",
                        step.name,
                        source,
                        target,
                        INDEX_MAP_VARIABLE,
                    )
            step = step.model_copy(update={"args": args, "script": script})
        steps.append(step)
    return plan.model_copy(update={"steps": steps})


def named_indexes(step: InstallStep) -> list[str]:
    """The index URLs a step names with pip's or uv's options, in order."""
    words = " ".join(step.args) if step.kind != "bash" else step.script
    found: list[str] = []
    for match in _FLAGGED_URL.finditer(" " + words):
        url = match.group(1).rstrip("/")
        if url not in found:
            found.append(url)
    return found


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def unreachable(output: str) -> bool:
    """True when an installer's output says a host could not be reached."""
    return bool(_UNREACHABLE.search(output))


class UnreachableIndexError(InstallError):
    """An install step failed because a package index it uses could not be reached; names
    the index, its host, and the setting that points the step elsewhere."""

    def __init__(self, error: InstallError, urls: list[str], *, named: bool) -> None:
        self.urls = urls
        self.named = named
        super().__init__(error.step, error.command, error.returncode, error.tail)

    def render(self) -> str:
        hosts = ", ".join(dict.fromkeys(_host(url) for url in self.urls))
        lines = [super().render()]
        if self.named:
            mirror = "https://mirror.example" + urlsplit(self.urls[0]).path
            lines += [
                f"  the package index this step names could not be reached from this machine: "
                f"{hosts} ({', '.join(self.urls)})",
                f"  point the step at a mirror with {INDEX_MAP_VARIABLE}="
                f"'{self.urls[0]}={mirror}' (comma-separated FROM=TO pairs rewrite index "
                "URLs in install steps)",
            ]
        else:
            lines += [
                f"  a package index could not be reached from this machine: {hosts} "
                f"({', '.join(self.urls)})",
                "  point the default index at a mirror with UV_DEFAULT_INDEX (uv) or "
                f"PIP_INDEX_URL (pip), or a URL the step names with {INDEX_MAP_VARIABLE}='FROM=TO'",
            ]
        return "\n".join(lines)


def explain_unreachable(error: InstallError, step: InstallStep) -> InstallError:
    """``error`` as an UnreachableIndexError when its output says an index could not be
    reached, naming the index; else ``error`` itself."""
    if not unreachable(error.tail):
        return error
    named = named_indexes(step)
    if named:
        seen = [url for url in named if _host(url) in error.tail]
        return UnreachableIndexError(error, seen or named, named=True)
    in_output: list[str] = []
    for line in error.tail.splitlines():
        for url in _URL.findall(line):
            if url.rstrip("/") not in in_output:
                in_output.append(url.rstrip("/"))
    if not in_output:
        return error
    return UnreachableIndexError(error, in_output[:3], named=False)
