"""``python -m benchmarks.projection``: the scaling phase alone, or its section rebuilt from a results JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.base.launch import log
from benchmarks.workloads.scaling.report import section
from benchmarks.workloads.scaling.runner import add_args, measure
from benchmarks.workloads.scaling.worker import SWEEP_SIZES, run_worker

if TYPE_CHECKING:
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    p.add_argument("--base-json", type=Path, help="start from this results JSON (its throughput cells, calibration)")
    p.add_argument("--no-measure", action="store_true", help="only analyse --base-json, measure nothing")
    p.add_argument("--out", type=Path, default=None, help="JSON to write (default benchmarks/results/scaling/<date>)")
    p.add_argument("--img-dir", type=Path, default=None, help="where the plot goes (default: next to the JSON)")
    p.add_argument("--md", type=Path, default=None, help="write the section's markdown here")
    p.add_argument("--timeout", type=float, default=300.0)
    w = p.add_argument_group("worker (one rank)")
    w.add_argument("--worker", action="store_true")
    w.add_argument("--task", choices=("sweep", "mlp", "throughput"))
    w.add_argument("--result")
    w.add_argument("--strategy")
    w.add_argument("--batch-size", type=int, default=64)
    w.add_argument("--warmup", type=int, default=2)
    w.add_argument("--steps", type=int, default=8)
    w.add_argument("--sizes", default=",".join(str(s) for s in SWEEP_SIZES))
    w.add_argument("--reps", type=int, default=3)
    w.add_argument("--rounds", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import datetime as dt

    from benchmarks.base import netns
    from benchmarks.base.launch import measured_link
    from benchmarks.base.rank import REPO

    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    # a folder of its own: benchmarks.report.page's latest_json takes the newest *.json in results/
    out_path = args.out or REPO / "benchmarks" / "results" / "scaling" / f"{stamp}.json"
    data: dict[str, Any] = json.loads(args.base_json.read_text()) if args.base_json else {"meta": {}}
    if not args.no_measure:
        data["meta"]["scaling_command"] = " ".join(["python -m benchmarks.projection", *(argv or sys.argv[1:])])
        data.pop("scaling", None)
        ok, why = netns.can_emulate()
        if not ok:
            log(f"NOTE: {why}; unshaped loopback only, no cluster")
        t0 = time.monotonic()
        with measured_link(args.timeout, plan=(ok, why), note=False) as (shaped, runner):
            measure(args, shaped, runner, data)
        data["meta"]["scaling_s"] = time.monotonic() - t0
        log(f"scaling phase measured in {data['meta']['scaling_s']:.0f} s")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(data, indent=1))
        log(f"wrote {out_path}")
    md = section(data, args.img_dir or out_path.parent / "img")
    if args.md:
        args.md.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
