"""A short soak (``make soak`` runs the long one): faults under signed traffic, then the audit finds nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

pytestmark = pytest.mark.integration


#: Faults the short soak injects at least, however slow the machine: its rounds go kill worker, stop gateway, pause
#: broker (without the embedded broker, the first two), so two worker kills, a gateway stop and a broker pause.
MIN_FAULTS = 4


@pytest.mark.timeout(900)
def test_faults_under_load_lose_nothing_and_apply_everything_once(tmp_path: Path) -> None:
    results_file = tmp_path / "soak.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.soak",
            *("--duration", "40", "--fault-interval", "6", "--min-faults", str(MIN_FAULTS)),
            *("--outage", "3", "--rate", "200"),
            *("--events-per-object", "8", "--settle", "240", "--json", str(results_file)),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=850,
    )
    assert results_file.exists(), done.stderr[-5000:]
    results = json.loads(results_file.read_text())
    assert done.returncode == 0, done.stderr[-5000:]
    audit = results["audit"]
    assert audit["missing"] == 0 and audit["duplicated"] == 0 and audit["pending"] == 0, done.stderr[-3000:]
    assert audit["acknowledged"] == results["events_acknowledged"] > 0
    assert results["states_wrong"] == 0  # every object: every event applied once, in order
    assert results["offset_reports"] == 0  # no worker took a restart or a rebalance for records gone
    faults = results["fault_counts"]
    assert faults.get("kill worker", 0) >= 2 and faults.get("stop gateway", 0) >= 1
    if "KAFKA_BOOTSTRAP_SERVERS" not in os.environ:  # the soak pauses only a broker it started itself
        assert faults.get("pause broker", 0) >= 1
    refused = sum(n for answer, n in results["answers"].items() if answer != "200")
    assert refused > 0  # the faults reached the sender, which retried until every event was taken
