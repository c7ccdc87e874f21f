"""Benchmarks on a real slow network: throughput, overlap and time-to-accuracy of every strategy.

One command measures everything and writes ``benchmarks/results/<date>.json``, ``docs/benchmarks.md``
and the plots in ``docs/img/``::

    sudo .venv/bin/python -m benchmarks.run                       # full default run (root: emulated links)
    .venv/bin/python -m benchmarks.run --quick                    # smoke test: tiny steps, unshaped link
    .venv/bin/python -m benchmarks.run --bandwidths unshaped,500mbit --strategies ssgd,odsgd,compute_only
    .venv/bin/python -m benchmarks.run --report-only              # rebuild docs from the latest JSON

The emulated cluster (:mod:`benchmarks.netns`): 2 ranks in two network namespaces joined by a veth
pair shaped with ``tbf`` to each bandwidth in turn. Without root the runner says so and runs on
loopback only. Each run starts both ranks as child processes (``ip netns exec``) with Lightning's
environment variables (``MASTER_ADDR`` = rank 0's veth address, ``RANK``, ``WORLD_SIZE``,
``NODE_RANK``, ``LOCAL_RANK``) and ``OMP_NUM_THREADS=1``; they report through JSON files. On a
real cluster, run the same worker (``--worker``, see :mod:`benchmarks.worker`) under torchrun or
your scheduler.

Plan of a full run, all on the same link(s) in one go:

1. per bandwidth: all-reduce throughput of a ResNet-18-sized fp32 buffer (the link bound);
2. calibration: compute-only step time at two batch sizes, ``t(B) = a + b B``; for each shaped
   bandwidth with all-reduce time ``A`` two batch sizes are chosen: ``t(B) = A`` (ssgd's all-reduce
   about equal to its compute) and ``t(B) = A / 2`` (ssgd's step about 3x the compute-only step);
   the unshaped link uses ``--batch-size``. ``--batch-sizes`` overrides the choice;
3. throughput: ResNet-18 per (bandwidth, batch, strategy); the compute-only bound once per batch;
4. accuracy: the digits CNN, every strategy but the compute-only bound, ``--seeds``, ``--epochs``,
   on the slowest shaped link.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import netns
from benchmarks.launch import RunFailed, Runner, machine
from benchmarks.worker import REPO, add_worker_args, run_worker

RESULTS = REPO / "benchmarks" / "results"
DEFAULT_BANDWIDTHS = "unshaped,1gbit,200mbit"
CALIBRATION_BATCHES = (16, 64)
MIN_BATCH, MAX_BATCH = 4, 512
TAIL = 3000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: unshaped link, 2 steps, batch 4, 1 epoch, 1 seed")
    p.add_argument("--bandwidths", default=None, help=f"comma-separated rates (default {DEFAULT_BANDWIDTHS})")
    p.add_argument("--strategies", default="", help="comma-separated names (default: ours + ddp, post_local_sgd, ...)")
    p.add_argument("--workloads", default="throughput,accuracy", help="throughput, accuracy or both")
    p.add_argument("--steps", type=int, default=None, help="timed steps per throughput run (default 8)")
    p.add_argument("--batch-sizes", default="", help="comma-separated batch sizes for every link (default: auto)")
    p.add_argument("--epochs", type=int, default=None, help="digits epochs (default 10)")
    p.add_argument("--seeds-list", dest="seeds_list", default=None, help="digits seeds (default 0,1,2)")
    p.add_argument("--target-acc", type=float, default=0.95, help="digits accuracy target for time-to-accuracy")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per run (both ranks)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory of the JSON results")
    p.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md", help="markdown report to write")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the newest JSON in --out")
    p.add_argument("--loopback", action="store_true", help="do not create namespaces even as root")
    add_worker_args(p)
    args = p.parse_args(argv)
    quick = args.quick
    args.bandwidths = args.bandwidths or ("unshaped" if quick else DEFAULT_BANDWIDTHS)
    args.steps = args.steps if args.steps is not None else (2 if quick else 8)
    args.epochs = args.epochs if args.epochs is not None else (1 if quick else 10)
    args.seeds_list = args.seeds_list or ("0" if quick else "0,1,2")
    if args.quick and not args.batch_sizes:
        args.batch_sizes = "4"
    if args.quick and args.warmup == 2:
        args.warmup = 1
    for name in ("steps", "epochs", "warmup"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in workloads if w not in ("throughput", "accuracy")]
    if bad or not workloads:
        p.error(f"--workloads must list 'throughput' and/or 'accuracy', got {args.workloads!r}")
    args.workload_list = workloads
    try:
        args.rates = [netns.parse_rate(b) for b in args.bandwidths.split(",") if b.strip()]
        args.batch_list = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
        args.seed_ints = [int(s) for s in args.seeds_list.split(",") if s.strip()]
    except ValueError as e:
        p.error(str(e))
    if any(b < 1 for b in args.batch_list):
        p.error(f"--batch-sizes must be >= 1, got {args.batch_sizes!r}")
    return args


def strategy_list(args: argparse.Namespace) -> list[str]:
    from benchmarks.baselines import all_names

    known = all_names()
    names = [s.strip() for s in args.strategies.split(",") if s.strip()] or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"error: unknown strategies {unknown}; known: {known}")
    if "ssgd" in names:
        names = ["ssgd", *[n for n in names if n != "ssgd"]]
    return names


def choose_batches(a: float, b: float, allreduce_s: float) -> dict[str, int]:
    """Batch sizes where compute-only ``t(B) = a + b B`` equals ``A`` and ``A / 2``."""
    out = {}
    for label, target in (("allreduce_eq_compute", allreduce_s), ("ssgd_3x_compute", allreduce_s / 2)):
        batch = round((target - a) / b) if b > 0 else MAX_BATCH
        out[label] = int(min(MAX_BATCH, max(MIN_BATCH, batch)))
    return out


TARGET_RATIOS = {"allreduce_eq_compute": 2.0, "ssgd_3x_compute": 3.0}
"""ssgd step / compute-only step wanted for each setting (all-reduce = compute means a ratio of 2)."""


def refine_batches(
    batches: dict[str, int], cal: dict[str, Any], run_ssgd: Callable[[int], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Run ssgd at each chosen batch; if its step ratio misses the target by > 20 %, move the batch once.

    The first choice assumes ssgd hides none of its all-reduce; DDP hides part of it behind
    backward, so the ratio comes out lower. The exposed part ``E = step - t(B)`` measured at the
    first choice gives the batch where ``t(B') = E / (ratio - 1)``. The ssgd run at the first batch
    stays in the results as a "probe" when the batch moves.
    """
    choice: dict[str, dict[str, Any]] = {}
    for label, batch in batches.items():
        target = TARGET_RATIOS[label]
        entry = run_ssgd(batch)
        info: dict[str, Any] = {"first": batch, "final": batch, "target_ratio": target}
        if entry["status"] == "ok":
            step = max(r["step_s"] for r in entry["ranks"])
            t_model = cal["a"] + cal["b"] * batch
            info["first_ratio"] = step / t_model
            if abs(info["first_ratio"] / target - 1) > 0.2 and cal["b"] > 0:
                exposed = max(0.0, step - t_model)
                final = round((exposed / (target - 1) - cal["a"]) / cal["b"])
                final = int(min(MAX_BATCH, max(MIN_BATCH, final)))
                if final != batch:
                    info["final"] = final
                    entry["role"] = "probe"
        choice[label] = info
    return choice


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(args: argparse.Namespace, shaped: netns.ShapedLink, runner: Runner, out: dict[str, Any]) -> None:
    from benchmarks.worker import resnet18_grad_bytes

    names = strategy_list(args)
    common = ["--warmup", str(args.warmup), "--steps", str(args.steps)]

    def throughput(rate: int | None, batch: int, name: str, role: str = "compare") -> dict[str, Any]:
        entry: dict[str, Any] = {
            "bandwidth": netns.format_rate(rate),
            "bps": rate,
            "batch_size": batch,
            "strategy": name,
            "role": role,  # "calibration" and "probe" runs are not compared in the report
        }
        t0 = time.monotonic()
        try:
            entry["ranks"] = runner.run("throughput", ["--strategy", name, "--batch-size", str(batch), *common])
            entry["status"] = "ok"
            sps = sum(r["samples_per_s"] for r in entry["ranks"])
            log(f"  {name:18s} B={batch:<4d} {sps:8.1f} samples/s ({time.monotonic() - t0:.0f} s)")
        except RunFailed as e:
            entry.update(status="failed", error=str(e))
            log(f"  {name}: FAILED ({str(e).splitlines()[0]})")
        out["throughput"].append(entry)
        return entry

    nbytes = resnet18_grad_bytes()
    if "throughput" in args.workload_list:
        compute_done: set[int] = set()
        if not args.batch_list:  # calibrate the compute-only step time
            for batch in CALIBRATION_BATCHES:
                shaped.shape(None)
                throughput(None, batch, "compute_only", role="calibration")
                compute_done.add(batch)
            pts = [
                (e["batch_size"], max(r["step_s"] for r in e["ranks"]))
                for e in out["throughput"]
                if e["strategy"] == "compute_only" and e["status"] == "ok"
            ]
            if len(pts) == 2:
                (b1, t1), (b2, t2) = pts
                slope = (t2 - t1) / (b2 - b1)
                out["calibration"] = {"points": pts, "a": t1 - slope * b1, "b": slope}
        for rate in args.rates:
            shaped.shape(rate)
            label = netns.format_rate(rate)
            log(f"link {label}: all-reduce of {nbytes / 1e6:.1f} MB")
            try:
                ranks = runner.run("allreduce", ["--nbytes", str(nbytes), "--reps", "1" if args.quick else "3"])
                link = {"bandwidth": label, "bps": rate, "allreduce": max(ranks, key=lambda r: r["seconds_per_op"])}
            except RunFailed as e:
                link = {"bandwidth": label, "bps": rate, "allreduce": None, "error": str(e)}
            out["links"].append(link)
            batches: dict[str, int] = {}
            if args.batch_list:
                batches = {f"batch {b}": b for b in args.batch_list}
            elif rate is None or link["allreduce"] is None or "calibration" not in out:
                batches = {"default": args.batch_size}
            else:
                cal = out["calibration"]
                batches = choose_batches(cal["a"], cal["b"], link["allreduce"]["seconds_per_op"])
                if "ssgd" in names:
                    link["batch_choice"] = refine_batches(batches, cal, lambda b, r=rate: throughput(r, b, "ssgd"))
                    batches = {k: v["final"] for k, v in link["batch_choice"].items()}
            link["batches"] = batches
            log(f"link {label}: batches {batches}")
            for batch in sorted(set(batches.values())):
                for name in names:
                    if name == "compute_only":
                        if batch in compute_done:
                            continue
                        compute_done.add(batch)
                    if name == "ssgd" and any(
                        e["strategy"] == "ssgd"
                        and e["batch_size"] == batch
                        and e["bps"] == rate
                        and e["role"] == "compare"
                        for e in out["throughput"]
                    ):
                        continue  # measured while choosing the batch
                    throughput(rate, batch, name)
            write_json(args, out)
    if "accuracy" in args.workload_list:
        shaped_rates = [r for r in args.rates if r is not None]
        rate = min(shaped_rates) if shaped_rates else None
        shaped.shape(rate)
        log(f"accuracy: digits on {netns.format_rate(rate)}")
        for name in [n for n in names if n != "compute_only"]:
            entry: dict[str, Any] = {"strategy": name, "bandwidth": netns.format_rate(rate), "bps": rate, "runs": []}
            extra = ["--strategy", name, "--epochs", str(args.epochs), "--batch-size", "32"]
            t0 = time.monotonic()
            try:  # all seeds in one pair of processes; if that fails, one pair per seed
                entry["runs"] = runner.run("digits", [*extra, "--seeds", args.seeds_list])[0]["runs"]
            except RunFailed as e:
                entry["error"] = str(e)
                for seed in args.seed_ints if len(args.seed_ints) > 1 else []:
                    try:
                        entry["runs"] += runner.run("digits", [*extra, "--seeds", str(seed)])[0]["runs"]
                    except RunFailed as e:
                        entry["error"] = str(e)
            entry["status"] = "ok" if len(entry["runs"]) == len(args.seed_ints) else "failed"
            accs = [r["epochs"][-1]["acc"] for r in entry["runs"] if r["epochs"]]
            log(f"  {name:18s} acc {accs} ({time.monotonic() - t0:.0f} s)")
            out["accuracy"].append(entry)
            write_json(args, out)


def write_json(args: argparse.Namespace, out: dict[str, Any]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    Path(out["meta"]["json_path"]).write_text(json.dumps(out, indent=1))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    from benchmarks import report

    if args.report_only:
        path = report.latest_json(args.out)
        report.write_report(json.loads(path.read_text()), args.docs)
        log(f"report rebuilt from {path} -> {args.docs}")
        return 0

    ok, why = netns.can_emulate()
    if args.loopback:
        ok, why = False, "--loopback given"
    if not ok and any(r is not None for r in args.rates):
        log(f"NOTE: {why}; running on loopback only, unshaped (bandwidths {args.bandwidths} ignored)")
        args.rates = [None]
    from benchmarks.baselines import SYNC_EVERY, strategy_kwargs
    from benchmarks.worker import versions

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(),
            "versions": versions(),
            "emulated": ok,
            "fallback_reason": None if ok else why,
            "quick": args.quick,
            "bandwidths": [netns.format_rate(r) for r in args.rates],
            "steps": args.steps,
            "warmup": args.warmup,
            "sync_every": SYNC_EVERY,
            "strategy_kwargs": {n: strategy_kwargs(n) for n in strategy_list(args)},
            "epochs": args.epochs,
            "seeds": args.seed_ints,
            "target_acc": args.target_acc,
            "command": " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
            "json_path": str(args.out / f"{stamp}.json"),
        },
        "links": [],
        "throughput": [],
        "accuracy": [],
    }
    start = time.monotonic()
    # SIGTERM must run the finally blocks below (namespace removal) like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="ldbench-") as tmp:
            if ok:
                removed = netns.remove_stale()
                if removed:
                    log(f"removed stale namespaces of earlier runs: {removed}")
                with netns.emulated_link() as shaped:
                    log(f"emulated link: namespaces {shaped.link.namespaces}")
                    measure(args, shaped, Runner(shaped.link, Path(tmp), args.timeout), out)
            else:
                shaped = netns.ShapedLink(netns.LOOPBACK, netns.run_command)
                measure(args, shaped, Runner(netns.LOOPBACK, Path(tmp), args.timeout), out)
    finally:
        signal.signal(signal.SIGTERM, previous)
    out["meta"]["total_s"] = time.monotonic() - start
    write_json(args, out)
    report.write_report(out, args.docs)
    log(f"done in {out['meta']['total_s']:.0f} s: {out['meta']['json_path']} and {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
