"""The README's first command, replayed offline: the organism's objective reaches the top 10.

Runs scripts/demo.sh (the exact command a newcomer runs) into a temporary run directory with
no server anywhere, and checks the per-framing spec counts it prints are the ones the README
quotes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(1200)


def test_demo_flags_the_objective_and_matches_the_readme(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "--out",
                        str(tmp_path / "demo"), "--quiet"], capture_output=True, text=True,
                       timeout=1100, env={**os.environ, "HTTP_PROXY": "http://127.0.0.1:9",
                                          "HTTPS_PROXY": "http://127.0.0.1:9",
                                          "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    summary = re.findall(r"^(raw|chat): (\d+) of the top (\d+) match the spec.*$", r.stdout,
                         re.MULTILINE)
    assert {s[0] for s in summary} == {"raw", "chat"}
    assert any(int(hit) > 0 for _, hit, _ in summary), "objective not in any top 10"
    readme = (ROOT / "README.md").read_text()
    for line in re.findall(r"^(?:raw|chat): \d+ of the top \d+ match the spec.*$", r.stdout,
                           re.MULTILINE):
        assert line in readme, f"README does not quote the demo's count: {line}"
    manifest = (tmp_path / "demo" / "manifest.json").read_text()
    assert '"sent": 0' in manifest  # nothing went to any network
    # The run ends by pointing at its report, whose top 10 of each framing shows the objective.
    report = tmp_path / "demo" / "report.html"
    assert r.stdout.rstrip().splitlines()[-1].startswith(f"report: {report}")
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>',
                      report.read_text(), re.S).group(1)
    rows = json.loads(block)["rows"]
    for framing in ("raw", "chat"):
        assert any(row["flag"] for row in rows if row["framing"] == framing
                   and row["rank"] < 10), framing
