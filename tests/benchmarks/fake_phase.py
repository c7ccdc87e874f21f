"""A phase module for the plumbing tests of :mod:`benchmarks.run` (no processes, no network)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks.base.phase import Phase

if TYPE_CHECKING:
    import argparse
    from pathlib import Path


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fake-size", type=int, default=7, help="fake phase: a size")


def estimate_s(args: argparse.Namespace) -> float:
    return 60.0 * args.fake_size


def measure(args: argparse.Namespace, shaped: Any, runner: Any, out: dict[str, Any]) -> None:
    if args.fake_size < 0:
        raise RuntimeError("fake phase asked to fail")
    out["fake"] = {"size": args.fake_size, "seen_throughput": len(out.get("throughput", []))}


def section(data: dict[str, Any], img_dir: Path) -> str:
    return f"## Fake phase\n\nsize {data['fake']['size']}\n"


PHASE = Phase(name="fake", add_args=add_args, measure=measure, section=section, estimate_s=estimate_s, writes=("fake",))
