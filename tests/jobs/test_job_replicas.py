"""Two ``ersilia_serve`` replicas of the demo model sharing one real Redis: jobs and cache."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from helpers import run_command, wait_until_gone
from jobkit import (
    CHUNK,
    ENV,
    OPTIONS,
    Server,
    check_result,
    final,
    progress,
    read_data,
    wait_for,
)


def replica(bundle: Path, folder: Path) -> Path:
    """A replica's own copy of the bundle (its own machine, as far as files go)."""
    shutil.copytree(bundle, folder / bundle.name, ignore=shutil.ignore_patterns("state"))
    return folder


def test_a_job_submitted_to_one_replica_is_followed_on_the_other_which_finishes_it(
    demo_packed: Path, tmp_path: Path, redis_url: str
) -> None:
    inputs, weights = read_data()
    env = {**ENV, "ERSILIA_PACK_REDIS_URL": redis_url}
    with Server(replica(demo_packed, tmp_path / "a"), *OPTIONS, env=env) as a:
        job_id = a.post("/job/submit?api=run", json=inputs).json()["job_id"]
        with Server(replica(demo_packed, tmp_path / "b"), *OPTIONS, env=env) as b:
            before = wait_for(
                lambda: progress(b, job_id, at_least=4 * CHUNK), within=240, what="4 chunks"
            )
            early = b.get(f"/job/result/{job_id}")
            a.kill()  # replica a dies with the job half done; b takes it over
            status = wait_for(lambda: final(b, job_id), within=300, what="the job to finish")
            check_result(b, job_id, inputs, weights)

    assert before["state"] == "running" and before["done"] < len(inputs)
    assert early.status_code == 409
    assert status["state"] == "done", status
    assert status["done"] == status["total"] == len(inputs)
    assert status["chunks"] == status["chunks_processed"] == math.ceil(len(inputs) / CHUNK)
    assert status["computed_rows"] + status["cached_rows"] == len(inputs)
    assert wait_until_gone(str(tmp_path)) == []


def test_rows_cached_by_one_replica_are_served_by_the_other(
    demo_packed: Path, tmp_path: Path, redis_url: str
) -> None:
    inputs, weights = read_data()
    sample, sample_weights = inputs[:300], weights[:300]
    env = {"ERSILIA_PACK_REDIS_URL": redis_url}
    with (
        Server(replica(demo_packed, tmp_path / "a"), env=env) as a,
        Server(replica(demo_packed, tmp_path / "b"), env=env) as b,
    ):
        computed = a.post("/run", json=sample)
        from_b = b.post("/run?cache_only=true", json=sample)

    assert computed.headers["x-cached-rows"] == "0"
    assert from_b.status_code == 200
    assert from_b.headers["x-cached-rows"] == str(len(sample))
    assert from_b.json() == computed.json()
    assert [row["mol_weight"] for row in from_b.json()] == [
        row["mol_weight"] for row in computed.json()
    ]
    assert all(
        math.isclose(row["mol_weight"], weight, rel_tol=1e-6)
        for row, weight in zip(from_b.json(), sample_weights)
    )


def test_a_repack_with_a_changed_model_never_answers_from_the_old_models_rows(
    demo_packed: Path, tmp_path: Path, redis_url: str
) -> None:
    inputs, weights = read_data()
    sample, sample_weights = inputs[:200], weights[:200]
    env = {"ERSILIA_PACK_REDIS_URL": redis_url}
    demo = Path(__file__).resolve().parents[2] / "examples" / "eos-demo"
    changed = tmp_path / "eos-demo-changed"
    shutil.copytree(demo, changed)
    script = changed / "model" / "framework" / "code" / "descriptors.py"
    source = script.read_text()
    assert "float(Descriptors.MolWt(mol))," in source
    script.write_text(
        source.replace("float(Descriptors.MolWt(mol)),", "1000 + Descriptors.MolWt(mol),")
    )
    eos = tmp_path / "eos"
    packed = run_command(
        "ersilia_pack", "--model_dir", changed, "--system", "--eos", eos, "--no-check"
    )
    assert packed.returncode == 0, packed.stdout + packed.stderr

    with Server(replica(demo_packed, tmp_path / "old"), env=env) as old:
        old.post("/run", json=sample)
    with Server(eos / "repository" / "eos-demo", env=env) as new:
        cached_only = new.post("/run?cache_only=true", json=sample)
        computed = new.post("/run", json=sample)

    assert len(cached_only.json()) == len(sample)
    assert all(value is None for row in cached_only.json() for value in row.values())
    assert cached_only.headers["x-cached-rows"] == "0"
    assert computed.headers["x-cached-rows"] == "0"
    assert all(
        math.isclose(row["mol_weight"], 1000 + weight, rel_tol=1e-6)
        for row, weight in zip(computed.json(), sample_weights)
    )
