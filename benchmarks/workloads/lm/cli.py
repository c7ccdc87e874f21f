"""The phase alone: ``python -m benchmarks.lm`` (and the ranks' ``--worker`` entry)."""

from __future__ import annotations

import json
import sys
from typing import Any

from benchmarks.workloads.lm.report import section
from benchmarks.workloads.lm.runner import measure
from benchmarks.workloads.lm.worker import _worker_args, run_worker


def main(argv: list[str] | None = None) -> int:
    args = _worker_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    from benchmarks.base.launch import measured_link

    out: dict[str, Any] = {}
    with measured_link(args.lm_timeout, prefix="ldbench-lm-") as (shaped, runner):
        measure(args, shaped, runner, out)
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.write_text(text)
        print(section(out, args.out.parent / "img"))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
