"""`python -m bench.chaos [--kills 20] [--size small|medium|large] [--seed 7]`: see bench/chaos/run.py
and docs/RELIABILITY.md. Prints one JSON summary on stdout (progress on stdout before it, each
line prefixed with a time); exit code 1 when a run failed, the states differ, or a duplicate
or missing write was found."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .run import dump, main


def cli() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    p.add_argument("--kills", type=int, default=20, help="worker SIGKILLs in total (default 20)")
    p.add_argument("--size", choices=["small", "medium", "large"], default="medium")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--page-size", type=int, default=25, help="customers per page activity (RECON_PAGE_SIZE)")
    p.add_argument("--state-dir", type=Path, default=None, help="keep the stack's files here")
    p.add_argument("--keep", action="store_true", help="keep the temporary stack folder")
    p.add_argument("--output", type=Path, default=None, help="also write the JSON summary here")
    a = p.parse_args()
    summary = asyncio.run(main(kills=a.kills, size=a.size, seed=a.seed, page_size=a.page_size,
                               state_dir=a.state_dir, keep=a.keep))
    text = dump(summary)
    print(text)
    if a.output:
        a.output.write_text(text + "\n")
    ok = (all(summary["runs_completed"].values()) and summary["equal_to_fault_free_run"]
          and summary["duplicates_found"] == 0 and summary["missing_writes"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(cli())
