"""Settings of a served model: flags of ersilia_serve, or ERSILIA_PACK_* environment variables."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

ENV_PREFIX = "ERSILIA_PACK_"


class ServeSettings(BaseModel):
    """How a bundle is served. Every field can be set as ``ERSILIA_PACK_<FIELD>``."""

    workers: int = Field(
        default=0, ge=0, description="processes per API; 0 shares the available CPUs"
    )
    timeout: float = Field(default=600.0, gt=0, description="seconds one model run may take")
    batch_size: int = Field(default=0, ge=0, description="inputs per run; 0 picks per API kind")
    batch_wait_ms: float = Field(default=0.0, ge=0, description="extra wait to merge requests")
    cold: bool = Field(default=False, description="run legacy scripts cold, never warm")
    api_key: str | None = Field(default=None, repr=False)
    max_body_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    max_inputs: int = Field(default=100_000, ge=1)
    max_input_length: int = Field(default=10_000, ge=1)
    cors_origins: list[str] = []
    redis_url: str | None = None
    cache_size: int = Field(default=1_000_000, ge=0, description="rows kept in the result cache")
    job_chunk_size: int = Field(default=1000, ge=1)
    job_ttl_hours: float = Field(default=168.0, gt=0)
    job_max_inputs: int = Field(default=5_000_000, ge=1, description="most inputs per job")
    job_max_body_bytes: int = Field(default=512 * 1024 * 1024, ge=1)

    @classmethod
    def from_env(cls, **overrides: object) -> ServeSettings:
        """Settings from ERSILIA_PACK_* variables, then the given overrides (None is ignored)."""
        values: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            raw = os.environ.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            if field.annotation == list[str]:
                values[name] = [item.strip() for item in raw.split(",") if item.strip()]
            else:
                values[name] = raw
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls.model_validate(values)
