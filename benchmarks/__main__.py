"""Run the benchmarks and print one ``GOAL`` line per goal.

    python -m benchmarks            # the full versions that BENCHMARKS.md reports (~30 min, 2 cores)
    python -m benchmarks --quick    # a quick check of every goal (a few minutes)
    python -m benchmarks --only throughput search
    HPO_BENCH_OUT=bench-results python -m benchmarks   # also write raw results as JSON there

Each benchmark measures ours and its baseline in the same process, interleaved, and prints the
ratio: on a shared machine absolute times move with the load, ratios much less. The precision
measurement (no goal line) runs apart: ``python -m benchmarks.precision``.
"""

from __future__ import annotations

import argparse
import time

from benchmarks import images
from benchmarks import overhead
from benchmarks import pruning
from benchmarks import search
from benchmarks import throughput
from benchmarks._common import load_average
from benchmarks._common import log

BENCHMARKS = {
    "throughput": throughput.run,
    "search": search.run,
    "pruning": pruning.run,
    "overhead": overhead.run,
    "images": images.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small versions of every benchmark")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="default: all")
    args = parser.parse_args()
    t0 = time.perf_counter()
    log(f"start: {load_average()}")
    lines: list[str] = []
    for name in args.only or list(BENCHMARKS):
        t = time.perf_counter()
        lines += BENCHMARKS[name](args.quick)
        log(f"-- {name}: {time.perf_counter() - t:.0f} s, {load_average()}")
    log(f"\n{'quick' if args.quick else 'full'} run: {time.perf_counter() - t0:.0f} s, "
        f"end {load_average()}")
    for line in lines:
        print(line, flush=True)


if __name__ == "__main__":
    main()
