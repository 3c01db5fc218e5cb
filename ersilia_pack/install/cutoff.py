"""The date an install resolves as of: the model's ``Last Packaging Date`` unless told otherwise.

Both installers read it from an environment variable (``UV_EXCLUDE_NEWER`` for uv,
``PIP_UPLOADED_PRIOR_TO`` for pip 26 and later), so structured steps and ``install.sh`` alike
see only packages uploaded before it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ersilia_pack.errors import PlanError

CARD_FIELD = "Last Packaging Date"
LATEST = "latest"


@dataclass(frozen=True)
class Cutoff:
    """``moment`` is None when resolution takes the newest packages."""

    moment: dt.datetime | None
    source: str

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
            return f"newest packages ({self.source})"
        return f"packages uploaded before {self.iso} ({self.source})"


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


def choose_cutoff(metadata: dict[str, Any], as_of: str | None) -> Cutoff:
    """``--as-of`` when given ('latest' turns the cut-off off), else the model card's date."""
    if as_of is not None:
        if as_of.strip().lower() == LATEST:
            return Cutoff(None, "--as-of latest")
        try:
            return Cutoff(parse_moment(as_of), "--as-of")
        except ValueError as error:
            raise PlanError(f"--as-of: {error}") from error
    value = metadata.get(CARD_FIELD)
    if value in (None, ""):
        return Cutoff(None, f"the model card has no '{CARD_FIELD}'")
    try:
        return Cutoff(parse_moment(str(value)), f"the model card's '{CARD_FIELD}'")
    except ValueError as error:
        raise PlanError(
            f"metadata: '{CARD_FIELD}' is {value!r}, not a date (e.g. {CARD_FIELD}: 2025-10-22); "
            "fix it or pack with --as-of DATE or --as-of latest"
        ) from error
