"""The result cache behind ``POST /<api>``, with SQLite and with a real Redis.

The counting model appends one line per run to a counter file, so "the model did not run" is
read from what the model itself did, not from the server's say-so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import app_client
from jobkit import computed_in

ROWS = {
    "CCO": {"length": 3, "upper": "CCO"},
    "hello": {"length": 5, "upper": "HELLO"},
    "abcd": {"length": 4, "upper": "ABCD"},
    "zz": {"length": 2, "upper": "ZZ"},
}
NULL = {"length": None, "upper": None}


def serve(bundle: Path, **settings: object) -> TestClient:
    """The bundle's app, running its script cold and with no start-up self-check: no warm-up
    or example run adds to the counter."""
    return app_client(bundle, cold=True, **{"self_check": False, **settings})


def test_a_repeated_request_is_answered_from_the_cache_and_the_model_does_not_run(
    bundle: Path, counter: Path, store_settings: dict[str, str]
) -> None:
    inputs = ["CCO", "hello", "CCO", "abcd"]
    with serve(bundle, **store_settings) as client:
        first = client.post("/run", json=inputs)
        after_first = computed_in(counter)
        engine_runs = client.app.state.service.engines["run"].runs  # type: ignore[attr-defined]
        second = client.post("/run", json=inputs)

        assert first.status_code == second.status_code == 200
        assert first.headers["x-cached-rows"] == "0"
        assert second.headers["x-cached-rows"] == "4"
        assert second.json() == first.json() == [ROWS[value] for value in inputs]
        assert after_first == 3  # duplicates are computed once
        assert computed_in(counter) == after_first
        assert client.app.state.service.engines["run"].runs == engine_runs  # type: ignore[attr-defined]


def test_only_the_inputs_missing_from_the_cache_are_computed(
    bundle: Path, counter: Path, store_settings: dict[str, str]
) -> None:
    with serve(bundle, **store_settings) as client:
        client.post("/run", json=["CCO", "hello"])
        before = computed_in(counter)
        response = client.post("/run", json=["hello", "zz", "CCO"])

    assert response.json() == [ROWS["hello"], ROWS["zz"], ROWS["CCO"]]
    assert response.headers["x-cached-rows"] == "2"
    assert (before, computed_in(counter)) == (2, 3)


def test_cache_only_never_runs_the_model_and_gives_null_rows_to_uncached_inputs(
    bundle: Path, counter: Path, store_settings: dict[str, str]
) -> None:
    with serve(bundle, **store_settings) as client:
        client.post("/run", json=["CCO"])
        response = client.post("/run?cache_only=true&with_meta=true", json=["zz", "CCO"])

    body = response.json()
    assert response.status_code == 200
    assert body["result"] == [NULL, ROWS["CCO"]]
    assert response.headers["x-failed-rows"] == "1"
    assert [item["index"] for item in body["meta"]["failed"]] == [0]
    assert "not in the result cache" in body["meta"]["failed"][0]["reason"]
    assert computed_in(counter) == 1


def test_fetch_cache_false_computes_again_and_save_cache_false_keeps_nothing(
    bundle: Path, counter: Path, store_settings: dict[str, str]
) -> None:
    with serve(bundle, **store_settings) as client:
        client.post("/run?save_cache=false", json=["CCO"])
        unsaved = client.post("/run?cache_only=true", json=["CCO"])
        client.post("/run", json=["hello"])
        refetched = client.post("/run?fetch_cache=False", json=["hello"])

    assert unsaved.json() == [NULL]
    assert refetched.json() == [ROWS["hello"]]
    assert refetched.headers["x-cached-rows"] == "0"
    assert computed_in(counter) == 3  # CCO, hello, hello again; never CCO from the cache


def test_null_rows_are_never_cached(
    bundle: Path, counter: Path, store_settings: dict[str, str]
) -> None:
    with serve(bundle, **store_settings) as client:
        first = client.post("/run", json=["bad", "CCO"])
        second = client.post("/run", json=["bad", "CCO"])

    assert first.json() == second.json() == [NULL, ROWS["CCO"]]
    assert second.headers["x-cached-rows"] == "1"
    assert computed_in(counter) == 3  # "bad" is computed again, "CCO" is not


def test_the_cache_survives_a_restart(
    bundle: Path, counter: Path, store_settings: dict[str, str]
) -> None:
    with serve(bundle, **store_settings) as client:
        client.post("/run", json=["CCO", "hello"])
    with serve(bundle, **store_settings) as client:
        response = client.post("/run?cache_only=true", json=["hello", "CCO"])

    assert response.json() == [ROWS["hello"], ROWS["CCO"]]
    assert computed_in(counter) == 2


def test_the_cache_keeps_only_the_newest_rows_up_to_its_size(
    bundle: Path, counter: Path, store_settings: dict[str, str]
) -> None:
    with serve(bundle, cache_size=3, **store_settings) as client:
        client.post("/run", json=["CCO", "hello"])
        client.post("/run", json=["abcd", "zz"])
        response = client.post("/run?cache_only=true", json=["CCO", "hello", "abcd", "zz"])

    assert response.json() == [NULL, ROWS["hello"], ROWS["abcd"], ROWS["zz"]]


@pytest.mark.parametrize(
    "card",
    [{"Output Consistency": "Variable"}, {"Task": "Generative"}],
    ids=["variable-output", "generative-task"],
)
def test_models_whose_output_varies_are_never_cached(
    pack_counting: Callable[..., Path],
    counter: Path,
    store_settings: dict[str, str],
    card: dict[str, str],
) -> None:
    varying = pack_counting(**card)
    with serve(varying, **store_settings) as client:
        client.post("/run", json=["CCO"])
        again = client.post("/run", json=["CCO"])
        cached_only = client.post("/run?cache_only=true", json=["CCO"])

    assert again.json() == [ROWS["CCO"]]
    assert again.headers["x-cached-rows"] == "0"
    assert cached_only.json() == [NULL]
    assert computed_in(counter) == 2


def test_a_repacked_model_whose_files_changed_does_not_answer_from_the_old_rows(
    bundle: Path,
    pack_counting: Callable[..., Path],
    counter: Path,
    store_settings: dict[str, str],
) -> None:
    # Same model id, so with Redis both bundles share one namespace; only the model hash
    # (a changed card here) tells their rows apart.
    changed = pack_counting(Description="The same model, described differently.")
    with serve(bundle, **store_settings) as client:
        client.post("/run", json=["CCO"])
    with serve(changed, **store_settings) as client:
        cached_only = client.post("/run?cache_only=true", json=["CCO"])
        computed = client.post("/run", json=["CCO"])

    assert cached_only.json() == [NULL]
    assert computed.headers["x-cached-rows"] == "0"
    assert computed_in(counter) == 2
