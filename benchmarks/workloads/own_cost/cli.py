"""The phase alone: ``python -m benchmarks.own_cost`` (and the ranks' ``--worker`` entry)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.base.launch import Runner
from benchmarks.workloads.own_cost.common import NAME
from benchmarks.workloads.own_cost.report import section
from benchmarks.workloads.own_cost.runner import add_args, measure
from benchmarks.workloads.own_cost.worker import run_worker


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.own_cost", description=__doc__.split("\n")[0])
    w = p.add_argument_group("worker (one rank, started by the phase)")
    w.add_argument("--worker", action="store_true")
    w.add_argument("--task", choices=(NAME,))
    w.add_argument("--result")
    w.add_argument("--strategies", default="")
    w.add_argument("--steps", type=int, default=24)
    w.add_argument("--warmup", type=int, default=4)
    w.add_argument("--repeats", type=int, default=3)
    w.add_argument("--batch-size", type=int, default=32)
    add_args(p)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results/own_cost"),
        help="where the JSON goes (not benchmarks/results itself: the report reads the latest JSON there)",
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds for the whole process pair")
    args = p.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    import tempfile

    from benchmarks.base import netns

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ldbench-") as tmp:
        ok, why = netns.can_emulate()
        if ok:
            with netns.emulated_link() as shaped:
                measure(args, shaped, Runner(shaped.link, Path(tmp), args.timeout), out)
        else:
            print(f"NOTE: {why}; on loopback", file=sys.stderr)
            measure(
                args,
                netns.ShapedLink(netns.LOOPBACK, netns.run_command),
                Runner(netns.LOOPBACK, Path(tmp), args.timeout),
                out,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"own_cost-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=1))
    print(section(out, args.out))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
