"""Settings of a served model: flags of ersilia_serve, or ERSILIA_PACK_* environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from ersilia_pack.errors import SettingsError

ENV_PREFIX = "ERSILIA_PACK_"
# Variables named after their flag where the flag and the field differ (--cors-origin).
_ENV_NAMES = {"cors_origins": ("CORS_ORIGIN", "CORS_ORIGINS")}


class ServeSettings(BaseModel):
    """How a bundle is served. Every field can be set as ``ERSILIA_PACK_<FIELD>``."""

    workers: int = Field(
        default=0, ge=0, description="processes per API; 0 shares the available CPUs"
    )
    timeout: float = Field(default=600.0, gt=0, description="seconds one model run may take")
    batch_size: int = Field(default=0, ge=0, description="inputs per run; 0 picks per API kind")
    batch_wait_ms: float = Field(default=0.0, ge=0, description="extra wait to merge requests")
    gpu_workers: int = Field(
        default=1,
        ge=1,
        description="processes (or legacy runs at a time) per GPU for APIs on a GPU",
    )
    cold: bool = Field(default=False, description="run legacy scripts cold, never warm")
    separate_workers: bool = Field(
        default=False,
        description="one model process per slot, each loading on its own, instead of slots "
        "forked from one loaded parent",
    )
    api_key: str | None = Field(default=None, repr=False)
    max_body_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    max_inputs: int = Field(default=100_000, ge=1)
    max_input_length: int = Field(default=10_000, ge=1)
    cors_origins: list[str] = []
    redis_url: str | None = None
    state_dir: Path | None = Field(
        default=None, description="where jobs, the cache and run folders go (default: state/)"
    )
    cache_size: int = Field(default=1_000_000, ge=0, description="rows kept in the result cache")
    job_chunk_size: int = Field(default=1000, ge=1)
    job_ttl_hours: float = Field(default=168.0, gt=0)
    job_claim_seconds: float = Field(
        default=30.0, gt=0, description="a chunk claim not renewed this long is taken over"
    )
    job_chunk_retries: int = Field(
        default=3, ge=0, description="tries again of a chunk the model failed, before giving up"
    )
    job_max_inputs: int = Field(default=5_000_000, ge=1, description="most inputs per job")
    job_max_body_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    public_metrics: bool = Field(default=False, description="GET /metrics needs no API key")
    fallback: bool = Field(
        default=True,
        description="move a warm API to cold, once, when a warm run fails where a cold run of "
        "the same inputs works",
    )
    self_check: bool = Field(
        default=True,
        description="run each API's example at start, the way it is served, before ready",
    )

    @classmethod
    def from_env(cls, **overrides: object) -> ServeSettings:
        """Settings from ERSILIA_PACK_* variables, then the given overrides (None is ignored).

        A variable whose value does not fit its setting is a SettingsError naming it.
        """
        values: dict[str, object] = {}
        sources: dict[str, str] = {}
        for name, field in cls.model_fields.items():
            for suffix in _ENV_NAMES.get(name, (name.upper(),)):
                raw = os.environ.get(ENV_PREFIX + suffix)
                if raw is not None:
                    break
            else:
                continue
            sources[name] = ENV_PREFIX + suffix
            if field.annotation == list[str]:
                values[name] = [item.strip() for item in raw.split(",") if item.strip()]
            else:
                values[name] = raw
        given = {key: value for key, value in overrides.items() if value is not None}
        values.update(given)
        sources = {key: value for key, value in sources.items() if key not in given}
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise SettingsError(_describe(error, values, sources)) from error


def _describe(error: ValidationError, values: dict[str, object], sources: dict[str, str]) -> str:
    lines = []
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem["loc"] else ""
        where = sources.get(name, f"--{name.replace('_', '-')}")
        shown = values.get(name)
        lines.append(f"{where}={shown!s}: {problem['msg']}")
    return "bad serve setting: " + "; ".join(lines)
