"""``python -m benchmarks.rerun``: merge one link's grid measured again into a full run and rebuild the page.

The merging lives in :mod:`benchmarks.report.rerun` (its docstring says what is replaced and what is kept).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import run
from benchmarks.base import schema
from benchmarks.report import page
from benchmarks.report.rerun import detail, merge


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Merge one link's throughput grid measured again into a full run's results."
    )
    p.add_argument("--base", type=Path, required=True, help="the full run's results JSON")
    p.add_argument("--rerun", type=Path, required=True, help="the results JSON of the grid measured again")
    p.add_argument("--previous", type=Path, help="an earlier results JSON whose cells on the link to show beside")
    p.add_argument("--bandwidth", required=True, help="the link whose grid the rerun replaces, e.g. 200mbit")
    p.add_argument("--why", required=True, help="one sentence for the page: why the grid was measured again")
    p.add_argument("--detail", type=Path, help="a small --cpu-split run to show as a section of its own")
    p.add_argument("--detail-why", default="", help="one sentence for the page: what the --detail run shows")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="directory of the merged file")
    p.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"), help="the page to rebuild")
    args = p.parse_args(argv)
    base, rerun = schema.load(args.base, run.PHASES), schema.load(args.rerun, run.PHASES)
    previous = schema.load(args.previous, run.PHASES) if args.previous else None
    merged = merge(base, rerun, args.bandwidth, args.why, previous, args.previous.name if args.previous else "")
    if args.detail:
        merged["throughput_detail"] = detail(schema.load(args.detail, run.PHASES), args.detail.name, args.detail_why)
    path = args.out / Path(rerun["meta"]["json_path"]).name
    if path.resolve() == args.base.resolve():
        raise SystemExit(f"error: {path} would overwrite the base file")
    merged["meta"]["json_path"] = str(path)
    schema.write(path, merged, run.PHASES)
    page.write_report(schema.load(path, run.PHASES), args.docs, run.phases())
    print(f"merged {args.rerun} into {args.base} -> {path}; page rebuilt: {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
