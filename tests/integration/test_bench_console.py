"""Smoke test of bench/console at a tiny size: every page the bench measures answers (the bench
stops on any non-200) and each list query's plan is printed. No timing is asserted (benchmarks
live under bench/; figures in docs/PERFORMANCE.md)."""

from __future__ import annotations

import json

import pytest

from bench.console import main, parse_args

pytestmark = pytest.mark.integration


async def test_bench_measures_every_page(capsys) -> None:
    await main(parse_args(["--runs", "60", "--audit-rows", "500", "--discrepancies", "120", "--repeat", "1"]))
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["runs"] == 60 and line["audit_rows"] == 500
    assert {"overview", "runs", "run (the big one)", "audit by a rare actor", "incident report (7 days)",
            "runs search (Temporal)"} <= set(line["pages"])
    assert all(p["max_ms"] > 0 for p in line["pages"].values())
    assert set(line["plans"]) == {"runs", "runs_failed", "runs_page_100", "run_discrepancies", "audit", "audit_actor",
                                  "audit_rare_actor", "audit_action", "audit_customer"}
    assert all(plan for plan in line["plans"].values())
