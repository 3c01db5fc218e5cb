"""The date an install resolves as of: the model's own date unless told otherwise.

The model's date is its card's ``Last Packaging Date``; without one, the date of the model
folder's last git commit (when it is in a git checkout), else the newest modification time of
its files (an archive keeps them), when that is in the past. ``--as-of`` overrides all three.
Both installers read the date from an environment variable (``UV_EXCLUDE_NEWER`` for uv,
``PIP_UPLOADED_PRIOR_TO`` for pip 26 and later), so structured steps and ``install.sh`` alike
see only packages uploaded before it.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ersilia_pack.errors import PlanError

CARD_FIELD = "Last Packaging Date"
LATEST = "latest"
# What the manifest's install.as_of_source says: the card's date, the model's last git commit,
# its files' newest modification time, --as-of, or no date at all (the newest packages).
Source = Literal["card", "git", "files", "flag", "latest"]
_GIT_TIMEOUT = 30


@dataclass(frozen=True)
class Cutoff:
    """``moment`` is None when resolution takes the newest packages; ``source`` is one word
    for the manifest, ``reason`` the same for a person."""

    moment: dt.datetime | None
    source: Source
    reason: str = ""

    @property
    def iso(self) -> str | None:
        if self.moment is None:
            return None
        return self.moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def variables(self) -> dict[str, str]:
        """What the installers read; empty when there is no cut-off."""
        if self.iso is None:
            return {}
        return {"UV_EXCLUDE_NEWER": self.iso, "PIP_UPLOADED_PRIOR_TO": self.iso}

    def describe(self) -> str:
        if self.iso is None:
            return f"newest packages ({self.reason})"
        return f"packages uploaded before {self.iso} ({self.reason})"


def parse_moment(text: str) -> dt.datetime:
    """``2025-10-22`` (midnight UTC starting that day) or an ISO 8601 date and time."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise ValueError(f"{text!r} is not a date (e.g. 2025-10-22) nor 'latest'") from error
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _git_date(model_dir: Path) -> tuple[dt.datetime, str] | None:
    """The committer date and short hash of the last commit touching ``model_dir``; None when
    it is not in a git checkout, has no commit, or git is missing."""
    try:
        done = subprocess.run(
            ["git", "log", "-1", "--format=%cI %h", "--", "."],
            cwd=model_dir,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    words = done.stdout.split()
    if done.returncode != 0 or len(words) != 2:
        return None
    try:
        return parse_moment(words[0]), words[1]
    except ValueError:
        return None


def _files_date(model_dir: Path) -> tuple[dt.datetime, str] | None:
    """The newest modification time among the model folder's files, and that file's path;
    hidden folders (.git) and caches do not count."""
    newest: tuple[float, str] | None = None
    for current, dirs, names in os.walk(model_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for name in names:
            try:
                moment = os.stat(os.path.join(current, name), follow_symlinks=False).st_mtime
            except OSError:
                continue
            if newest is None or moment > newest[0]:
                relative = Path(current, name).relative_to(model_dir).as_posix()
                newest = (moment, relative)
    if newest is None:
        return None
    return dt.datetime.fromtimestamp(newest[0], tz=dt.timezone.utc), newest[1]


def model_cutoff(model_dir: Path, *, now: dt.datetime | None = None) -> Cutoff:
    """The cut-off of a model whose card has no date: its last git commit, else its files'
    newest modification time, when in the past; else none."""
    now = now or dt.datetime.now(dt.timezone.utc)
    missing = f"the model card has no '{CARD_FIELD}'"
    committed = _git_date(model_dir)
    if committed is not None and committed[0] < now:
        return Cutoff(
            committed[0], "git", f"{missing}: the model's last git commit, {committed[1]}"
        )
    modified = _files_date(model_dir)
    if modified is not None and modified[0] < now:
        return Cutoff(
            modified[0],
            "files",
            f"{missing}: the newest modification time of the model's files, {modified[1]}",
        )
    return Cutoff(
        None, "latest", f"{missing}, nor a git commit or file modification time in the past"
    )


def choose_cutoff(
    metadata: dict[str, Any],
    as_of: str | None,
    *,
    model_dir: Path | None = None,
    now: dt.datetime | None = None,
) -> Cutoff:
    """``--as-of`` when given ('latest' turns the cut-off off), else the model card's date,
    else (with ``model_dir``) the model's last git commit or its files' newest time."""
    if as_of is not None:
        if as_of.strip().lower() == LATEST:
            return Cutoff(None, "flag", "--as-of latest")
        try:
            return Cutoff(parse_moment(as_of), "flag", "--as-of")
        except ValueError as error:
            raise PlanError(f"--as-of: {error}") from error
    value = metadata.get(CARD_FIELD)
    if value in (None, ""):
        if model_dir is not None:
            return model_cutoff(model_dir, now=now)
        return Cutoff(None, "latest", f"the model card has no '{CARD_FIELD}'")
    try:
        return Cutoff(parse_moment(str(value)), "card", f"the model card's '{CARD_FIELD}'")
    except ValueError as error:
        raise PlanError(
            f"metadata: '{CARD_FIELD}' is {value!r}, not a date (e.g. {CARD_FIELD}: 2025-10-22); "
            "fix it or pack with --as-of DATE or --as-of latest"
        ) from error
