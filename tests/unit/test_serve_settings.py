"""Serve settings from ERSILIA_PACK_* variables: names as the README spells them, bad values
as errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from ersilia_pack.errors import SettingsError
from ersilia_pack.runtime.settings import ServeSettings


def test_cors_origins_are_read_from_the_flags_name_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ERSILIA_PACK_CORS_ORIGIN", "https://a.example, https://b.example,")
    assert ServeSettings.from_env().cors_origins == ["https://a.example", "https://b.example"]


def test_the_state_folder_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ERSILIA_PACK_STATE_DIR", str(tmp_path))
    assert ServeSettings.from_env().state_dir == tmp_path
    assert ServeSettings.from_env(state_dir=tmp_path / "flag").state_dir == tmp_path / "flag"


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERSILIA_PACK_WORKERS", "abc")
    monkeypatch.setenv("ERSILIA_PACK_TIMEOUT", "-1")
    with pytest.raises(SettingsError) as caught:
        ServeSettings.from_env()
    message = caught.value.render()
    assert caught.value.exit_code == 1
    assert "ERSILIA_PACK_WORKERS=abc: Input should be a valid integer" in message
    assert "ERSILIA_PACK_TIMEOUT=-1: Input should be greater than 0" in message
