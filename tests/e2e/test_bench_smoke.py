"""End-to-end: a smoke run of the benchmark (tiny loads), so that ``make bench`` cannot rot.

No speed is asserted here: only that every scenario ran, counted its deliveries exactly and
lost nothing, and that the JSON and the plot were written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import SCENARIOS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_runs_every_scenario_without_loss(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out),
         "--data-dir", str(tmp_path / "system")],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]

    reports = list(out.glob("*.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert reports[0].with_suffix(".png").stat().st_size > 0
    assert set(report["scenarios"]) == set(SCENARIOS)
    for name, entry in report["scenarios"].items():
        assert "error" not in entry, f"{name}: {entry.get('error')}"
        counts = entry["counts"]
        assert counts["delivered"] > 0, name
        assert counts["lost"] == 0, name
        assert counts["delivered"] == counts["expected"], name
    # The table names every scenario.
    for entry in report["scenarios"].values():
        assert entry["title"] in done.stdout
