"""A short run of bench/load.py (8 clients, 10 s): the same correctness checks as the full
load test, none about speed. It packs and serves the demo model itself, as anyone running
the script would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from security_helpers import ROOT

EXPECTED_INVALID = {
    "bad-json 400",
    "content-type 415",
    "empty-list 422",
    "not-strings 422",
    "bad-orient 422",
}


def test_a_short_load_run_answers_everything_correctly(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other section\n\nkept as it is\n")
    run = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "load.py")),
            *("--clients", "8", "--duration", "10", "--warmup", "2"),
            *("--json", str(report_path), "--results", str(results)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(report_path.read_text())
    assert all(report["verdicts"].values()), report["verdicts"]
    assert report["valid"] > 0 and report["invalid"] > 0
    assert report["server_errors"] == 0
    assert report["wrong_answers"] == 0
    assert report["wrong_statuses"] == 0
    assert report["transport_errors"] == 0
    # Every kind of invalid request was sent and got exactly its status; valid ones got 200.
    statuses = set(report["statuses"])
    assert statuses >= EXPECTED_INVALID
    assert statuses - EXPECTED_INVALID == {"valid 200"}
    for moment in ("resources_start", "resources_end"):
        figures = report[moment]
        assert 0 < figures["server_rss_mib"] <= figures["tree_rss_mib"]
        assert figures["server_fds"] > 0 and figures["processes"] >= 2  # server and workers
    # Its own section of RESULTS.md was added; the other one kept.
    text = results.read_text()
    assert "## Other section\n\nkept as it is\n" in text
    assert text.count("## Load test") == 1
    assert "| 5xx answers | 0 |" in text
