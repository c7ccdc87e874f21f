"""The phase alone: ``python -m benchmarks.peer`` (and the ranks' ``--worker`` entry)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.base import netns
from benchmarks.workloads.peer.report import section
from benchmarks.workloads.peer.runner import add_args, measure
from benchmarks.workloads.peer.worker import _worker_main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        _worker_main(argv)
        return 0
    import tempfile

    from benchmarks.base.launch import Runner

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_args(p)
    p.add_argument("--json", default="peer.json", help="where to write the phase's JSON")
    p.add_argument("--markdown", default="", help="also write the section here (images next to it in img/)")
    args = p.parse_args(argv)
    ok, why = netns.can_emulate()
    if not ok:
        sys.exit(f"the emulated link needs root: {why}")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, netns.emulated_link() as shaped:
        measure(args, shaped, Runner(shaped.link, Path(tmp), args.peer_timeout), out)
    Path(args.json).write_text(json.dumps(out, indent=1))
    if args.markdown:
        md = Path(args.markdown)
        md.write_text(section(out, md.parent / "img"))
    for bw, link in out["peer"]["links"].items():
        print(bw, json.dumps({k: v for k, v in link["summary"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
