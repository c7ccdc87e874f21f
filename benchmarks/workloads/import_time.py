"""CPU time that ``import lightning_delayed`` adds on top of ``import lightning``.

Each sample is a fresh interpreter that imports ``lightning`` (and ``lightning.pytorch``, which the
package needs anyway), then measures the process CPU time (user + system, ``resource.getrusage``)
spent in ``import lightning_delayed``. CPU time rather than wall time, so a loaded machine does not
inflate the figure. Prints the median and the spread over ``--runs`` samples; the budget (issue
14) is 0.3 s. Usage::

    python benchmarks/import_time.py --runs 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROBE = """
import json, resource, time
import lightning, lightning.pytorch
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c0, w0 = cpu(), time.perf_counter()
import lightning_delayed
print(json.dumps({"cpu": cpu() - c0, "wall": time.perf_counter() - w0}))
"""


def sample() -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--budget", type=float, default=0.3, help="seconds of CPU time allowed")
    args = parser.parse_args()
    samples = [sample() for _ in range(args.runs)]
    cpu = sorted(s["cpu"] for s in samples)
    wall = sorted(s["wall"] for s in samples)
    median = statistics.median(cpu)
    print(
        f"import lightning_delayed after import lightning: CPU {median:.3f} s median "
        f"(min {cpu[0]:.3f}, max {cpu[-1]:.3f}; wall median {statistics.median(wall):.3f} s) over {args.runs} runs; "
        f"budget {args.budget:.1f} s: {'OK' if median < args.budget else 'OVER'}"
    )
    if median >= args.budget:
        sys.exit(1)


if __name__ == "__main__":
    main()
