"""``bench/feedback.py`` runs (quick mode, on the test servers) and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_feedback_benchmark_prints_rates_ratio_and_memory(servers) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "feedback.py"), "--quick", "--workers", "1",
         "--redis-url", servers.redis_url, "--bootstrap", servers.kafka],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for promised in ("end to end:", "redis ceiling:", "ratio:", "bytes per learner key:",
                     "bytes per logged prediction:", "exactly-once memory:", "worker resident memory after",
                     "compare-and-set", "WATCH/MULTI/EXEC", "Lua math"):  # fmt: skip
        assert promised in out, out
