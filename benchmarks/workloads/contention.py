"""Why overlap efficiency is bounded on this machine: compute slows down while communication runs.

Overlapping strategies hide the all-reduce behind compute only if the all-reduce leaves the
compute alone. On a machine where the ranks' compute already uses every core, the communication's
own CPU work (gloo's copies and reductions, the kernel's TCP and veth processing) takes cycles
from the compute. This measures, per link, ResNet-18 steps alone and while a ResNet-18-sized
all-reduce runs back to back on the same ranks (``task_contention`` in :mod:`benchmarks.base.tasks`)::

    sudo .venv/bin/python -m benchmarks.contention            # unshaped, 1gbit, 200mbit
    .venv/bin/python -m benchmarks.contention --batch-size 48 --bandwidths unshaped

``compute speed under comm`` (step time alone / step time with the all-reduce running) is the
highest overlap efficiency (samples/s over the compute-only bound) any overlapping strategy can
reach on that link when its communication runs during the whole step. Results go to
``benchmarks/results/contention-<date>.json`` and a section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.base import netns
from benchmarks.base.launch import Runner

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- contention: begin -->", "<!-- contention: end -->"


def measure(bandwidths: list[str], batch_size: int, steps: int, timeout: float) -> list[dict[str, Any]]:
    extra = ["--batch-size", str(batch_size), "--warmup", "2", "--steps", str(steps)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ldbench-") as tmp:
        ok, why = netns.can_emulate()
        if not ok:
            print(f"no emulated links ({why}); measuring on loopback only")
            results = Runner(netns.LOOPBACK, Path(tmp), timeout).run("contention", extra)
            return [{"bandwidth": "loopback", "ranks": results}]
        with netns.emulated_link() as shaped:
            runner = Runner(shaped.link, Path(tmp), timeout)
            for bw in bandwidths:
                shaped.shape(netns.parse_rate(bw))
                results = runner.run("contention", extra)
                rows.append({"bandwidth": bw, "ranks": results})
                speeds = ", ".join(f"{r['compute_speed_under_comm']:.2f}" for r in results)
                print(f"{bw:>9}: compute speed under comm per rank: {speeds}", flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], batch_size: int) -> str:
    lines = [
        BEGIN,
        "## Why overlap is bounded here: compute slows down while communication runs",
        "",
        f"`python -m benchmarks.contention --batch-size {batch_size}`: ResNet-18 steps (forward, backward, SGD) "
        "alone, then while a thread runs back-to-back all-reduces of a ResNet-18-sized buffer on the same two "
        "ranks. The ratio is the highest overlap efficiency an overlapping strategy can reach on that link when "
        "its communication runs during the whole step: the 2 cores are already busy with one compute thread "
        "per rank, and gloo's copies and the kernel's TCP/veth work take cycles from them.",
        "",
        "| link | step alone (s) | step with all-reduce running (s) | compute speed under comm | all-reduces during |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        alone = max(r["step_alone_s"] for r in row["ranks"])
        shared = max(r["step_under_comm_s"] for r in row["ranks"])
        count = row["ranks"][0]["allreduces_during"]
        lines.append(f"| {row['bandwidth']} | {alone:.3f} | {shared:.3f} | {alone / shared:.2f} | {count} |")
    lines += ["", END]
    return "\n".join(lines)


def write_docs(section: str, docs: Path) -> None:
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    docs.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bandwidths", default="unshaped,1gbit,200mbit")
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    rows = measure(
        [b.strip() for b in args.bandwidths.split(",") if b.strip()], args.batch_size, args.steps, args.timeout
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"contention-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"batch_size": args.batch_size, "rows": rows}, indent=1))
    write_docs(markdown(rows, args.batch_size), args.docs)
    print(f"wrote {path} and {args.docs}")


if __name__ == "__main__":
    main()
