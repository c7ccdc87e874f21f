"""Benchmarks on a real slow network: throughput, the algorithms' own cost, a language model, a peer, a projection.

One command measures everything and writes ``benchmarks/results/<date>.json``, ``docs/benchmarks.md``
and the plots in ``docs/img/``::

    sudo .venv/bin/python -m benchmarks.run                       # full default run (root: emulated links)
    .venv/bin/python -m benchmarks.run --quick                    # smoke test: tiny steps, unshaped link
    .venv/bin/python -m benchmarks.run --bandwidths unshaped,500mbit --strategies ssgd,odsgd,compute_only
    .venv/bin/python -m benchmarks.run --workloads throughput --repeats 5
    .venv/bin/python -m benchmarks.run --report-only              # rebuild docs from the latest JSON

The emulated cluster (:mod:`benchmarks.base.netns`): 2 ranks in two network namespaces joined by a veth
pair shaped with ``tbf`` to each bandwidth in turn. Without root the runner says so and runs on
loopback only. Each run starts both ranks as child processes (``ip netns exec``) with Lightning's
environment variables (``MASTER_ADDR`` = rank 0's veth address, ``RANK``, ``WORLD_SIZE``,
``NODE_RANK``, ``LOCAL_RANK``) and ``OMP_NUM_THREADS=1``; they report through JSON files. On a
real cluster, run the same worker (``--worker``, see :mod:`benchmarks.base.rank`) under torchrun or
your scheduler.

Plan of a full run, all on the same link(s) in one go (``--workloads`` picks the phases, in order):

1. per bandwidth: all-reduce throughput of a ResNet-18-sized fp32 buffer (the link bound; every
   bandwidth, also those without a throughput grid: the projection fits its link model to them);
2. calibration: compute-only step time at two batch sizes, ``t(B) = a + b B``; for each shaped
   bandwidth of the grid with all-reduce time ``A`` the batch of each ``--batch-settings`` entry is
   chosen: ``allreduce_eq_compute``: ``t(B) = A`` (ssgd's all-reduce about equal to its compute),
   ``ssgd_3x_compute``: ``t(B) = A / 2`` (ssgd's step about 3x the compute-only step); the unshaped
   link uses ``--batch-size``. ``--batch-sizes`` overrides the choice;
3. ``throughput``: ResNet-18 per (bandwidth of ``--throughput-bandwidths``, batch): ``--repeats``
   rounds, each running every strategy once in the same order (A B C, A B C, ...), the compute-only
   bound included, so slow drifts of the machine hit every strategy alike; each round's ratios are
   taken against the same round's ssgd and compute-only runs;
4. the phases of :data:`PHASES` (``own_cost``, ``lm``, ``peer``, ``scaling``), each from its own module;
5. ``accuracy`` (not in the default): the digits CNN, every strategy but the compute-only bound,
   ``--seeds-list``, ``--epochs``, on the slowest shaped link.

The JSON is written after every phase, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.base import netns
from benchmarks.base.launch import RunFailed, Runner, machine
from benchmarks.base.rank import REPO, add_worker_args, run_worker

RESULTS = REPO / "benchmarks" / "results"
DEFAULT_BANDWIDTHS = "unshaped,1gbit,200mbit"
DEFAULT_GRID_BANDWIDTHS = "unshaped,1gbit"
"""Where the throughput grid runs by default: 3 repeats of 13 strategies at 200 Mbit/s alone would take ~40 min."""
DEFAULT_SETTINGS = "allreduce_eq_compute"
DEFAULT_WORKLOADS = "throughput,own_cost,lm,peer,scaling"
CORE_WORKLOADS = ("throughput", "accuracy")
PHASES: dict[str, str] = {
    "own_cost": "benchmarks.workloads.own_cost",
    "lm": "benchmarks.workloads.lm",
    "peer": "benchmarks.workloads.peer",
    "scaling": "benchmarks.workloads.scaling",
}
"""Phase name -> module with ``add_args(parser)``, ``measure(args, shaped, runner, out)``, ``section(data, img_dir)``.

Optional: ``estimate_s(args) -> float``, the phase's run time on a quiet machine, for the budget printed at start.
"""
CALIBRATION_BATCHES = (16, 64)
MIN_BATCH, MAX_BATCH = 4, 512
PROBE_WARMUP, PROBE_STEPS = 1, 8
"""Calibration and batch-probe runs only choose a batch (20 % tolerance): short runs keep the budget."""
STARTUP_S = 10.0
"""Seconds one pair of worker processes needs before its first step (imports, process group)."""
TAIL = 3000


PHASE_ERRORS: dict[str, str] = {}
"""Why a phase's module could not be imported (reported only if that phase is asked for)."""


def load_phase(name: str) -> ModuleType | None:
    """The module of phase ``name``, or None if it cannot be imported (not written yet, a dependency missing)."""
    try:
        return importlib.import_module(PHASES[name])
    except ImportError as e:
        PHASE_ERRORS[name] = f"{type(e).__name__}: {e}"
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: unshaped link, 2 steps, batch 4, 1 repeat")
    p.add_argument("--bandwidths", default=None, help=f"comma-separated rates (default {DEFAULT_BANDWIDTHS})")
    p.add_argument(
        "--throughput-bandwidths",
        default=None,
        help=f"the bandwidths with a throughput grid (default {DEFAULT_GRID_BANDWIDTHS} when --bandwidths is not "
        "given, else all of --bandwidths); the others only get their all-reduce measured",
    )
    p.add_argument("--strategies", default="", help="comma-separated names (default: ours + ddp, post_local_sgd, ...)")
    p.add_argument(
        "--workloads",
        default=None,
        help=f"comma-separated phases, run in this order (default {DEFAULT_WORKLOADS}; also: accuracy)",
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per throughput run (default 24)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds of the throughput grid (default 3)")
    p.add_argument("--batch-sizes", default="", help="comma-separated batch sizes for every link (default: auto)")
    p.add_argument(
        "--batch-settings",
        default=DEFAULT_SETTINGS,
        help="comma-separated automatic batch choices for shaped links: allreduce_eq_compute, ssgd_3x_compute",
    )
    p.add_argument("--epochs", type=int, default=None, help="digits epochs (default 10)")
    p.add_argument("--seeds-list", dest="seeds_list", default=None, help="digits seeds (default 0,1,2)")
    p.add_argument("--target-acc", type=float, default=0.95, help="digits accuracy target for time-to-accuracy")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per run (both ranks)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory of the JSON results")
    p.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md", help="markdown report to write")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the newest JSON in --out")
    p.add_argument("--loopback", action="store_true", help="do not create namespaces even as root")
    add_worker_args(p)
    p.set_defaults(warmup=None)  # the runner's default (3) differs from a bare worker's (2)
    missing = set()
    for name in PHASES:
        module = load_phase(name)
        if module is None:
            missing.add(name)
        else:
            module.add_args(p)
    args = p.parse_args(argv)
    quick = args.quick
    explicit_bandwidths = args.bandwidths is not None
    args.bandwidths = args.bandwidths or ("unshaped" if quick else DEFAULT_BANDWIDTHS)
    args.steps = args.steps if args.steps is not None else (2 if quick else 24)
    args.repeats = args.repeats if args.repeats is not None else (1 if quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2 if args.worker else 3)
    args.epochs = args.epochs if args.epochs is not None else (1 if quick else 10)
    args.seeds_list = args.seeds_list or ("0" if quick else "0,1,2")
    if args.quick and not args.batch_sizes:
        args.batch_sizes = "4"
    for name in ("steps", "epochs", "warmup", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    known = [*CORE_WORKLOADS, *PHASES]
    workloads = [w.strip() for w in (args.workloads or DEFAULT_WORKLOADS).split(",") if w.strip()]
    bad = [w for w in workloads if w not in known]
    if bad or not workloads:
        p.error(f"--workloads must list phases of {known}, got {args.workloads!r}")
    absent = [w for w in workloads if w in missing]
    if absent and args.workloads is not None:
        why = "; ".join(f"{w} ({PHASES[w]}): {PHASE_ERRORS.get(w, '?')}" for w in absent)
        p.error(f"phase(s) {absent} cannot be loaded: {why}")
    args.skipped_phases = absent  # default list only: a phase whose module is not there yet is left out, with a note
    args.workload_list = [w for w in workloads if w not in absent]
    settings = [s.strip() for s in args.batch_settings.split(",") if s.strip()]
    if not settings or any(s not in TARGET_RATIOS for s in settings):
        p.error(f"--batch-settings must list of {list(TARGET_RATIOS)}, got {args.batch_settings!r}")
    args.setting_list = settings
    try:
        args.rates = [netns.parse_rate(b) for b in args.bandwidths.split(",") if b.strip()]
        grid = args.throughput_bandwidths or (
            args.bandwidths if explicit_bandwidths or quick else DEFAULT_GRID_BANDWIDTHS
        )
        args.grid_rates = [netns.parse_rate(b) for b in grid.split(",") if b.strip()]
        args.batch_list = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
        args.seed_ints = [int(s) for s in args.seeds_list.split(",") if s.strip()]
    except ValueError as e:
        p.error(str(e))
    extra = [netns.format_rate(r) for r in args.grid_rates if r not in args.rates]
    if extra:
        p.error(f"--throughput-bandwidths {extra} are not in --bandwidths {args.bandwidths!r}")
    if any(b < 1 for b in args.batch_list):
        p.error(f"--batch-sizes must be >= 1, got {args.batch_sizes!r}")
    return args


def strategy_list(args: argparse.Namespace) -> list[str]:
    from benchmarks.base.baselines import all_names

    known = all_names()
    names = [s.strip() for s in args.strategies.split(",") if s.strip()] or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"error: unknown strategies {unknown}; known: {known}")
    if "ssgd" in names:
        names = ["ssgd", *[n for n in names if n != "ssgd"]]
    return names


def interleave(names: list[str], repeats: int) -> list[tuple[int, str]]:
    """(round, strategy) in run order: every strategy once per round, rounds one after the other (A B, A B)."""
    return [(r, name) for r in range(repeats) for name in names]


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
    stays in the results as a "probe" (the rounds measure ssgd again beside the others).
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
                info["final"] = int(min(MAX_BATCH, max(MIN_BATCH, final)))
        choice[label] = info
    return choice


def previous_results(directory: Path) -> dict[str, Any] | None:
    """The newest dated results JSON in ``directory`` (for the budget estimate), or None."""
    from benchmarks.report import page as report

    try:
        return dict(json.loads(report.latest_json(directory).read_text()))
    except (SystemExit, OSError, ValueError):
        return None


def step_estimate(prev: dict[str, Any], bandwidth: str, batch: int | None, name: str) -> float:
    """A previous run's step time of ``name`` on ``bandwidth`` at the batch nearest ``batch``.

    Falls back to the median over strategies on that link (a strategy the previous run lacked),
    then over everything, then 1 s.
    """
    ok = [e for e in prev.get("throughput", []) if e.get("status") == "ok"]

    def step(e: dict[str, Any]) -> float:
        return float(max(r["step_s"] for r in e["ranks"]))

    def nearest(es: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if batch is None or not es:
            return es
        best = min(abs(e["batch_size"] - batch) for e in es)
        return [e for e in es if abs(e["batch_size"] - batch) == best]

    for pool in (
        [e for e in ok if e["bandwidth"] == bandwidth and e["strategy"] == name],
        [e for e in ok if e["bandwidth"] == bandwidth],
        ok,
    ):
        pool = nearest(pool)
        if pool:
            return float(statistics.median(step(e) for e in pool))
    return 1.0


def previous_batch(prev: dict[str, Any], bandwidth: str, setting: str) -> int | None:
    for link in prev.get("links", []):
        if link["bandwidth"] == bandwidth:
            batches = link.get("batches", {})
            if setting in batches:
                return int(batches[setting])
            if batches:
                return int(next(iter(batches.values())))
    return None


def estimate_throughput_s(args: argparse.Namespace, names: list[str], prev: dict[str, Any]) -> dict[str, float]:
    """Seconds of the throughput phase on a quiet machine, per part, from a previous run's step times.

    Each pair of processes costs :data:`STARTUP_S` plus (warm-up + steps) x its step time.
    """
    run_steps = args.warmup + args.steps
    short = min(args.warmup, PROBE_WARMUP) + min(args.steps, PROBE_STEPS)
    parts: dict[str, float] = {}
    allreduce = 0.0
    for rate in args.rates:
        label = netns.format_rate(rate)
        link = next((x for x in prev.get("links", []) if x["bandwidth"] == label and x.get("allreduce")), None)
        a = link["allreduce"]["seconds_per_op"] if link else 1.0
        allreduce += STARTUP_S + (1 + (1 if args.quick else 3)) * a  # one warm-up op, then the timed ones
    parts["all-reduce"] = allreduce
    shaped_grid = [r for r in args.grid_rates if r is not None]
    if shaped_grid and not args.batch_list:
        parts["calibration"] = sum(
            STARTUP_S + short * step_estimate(prev, "unshaped", b, "compute_only") for b in CALIBRATION_BATCHES
        )
    for rate in args.grid_rates:
        label = netns.format_rate(rate)
        if args.batch_list:
            batches = list(args.batch_list)
        elif rate is None:
            batches = [args.batch_size]
        else:
            batches = [previous_batch(prev, label, s) or args.batch_size for s in args.setting_list]
        total = 0.0
        for batch in batches:
            if rate is not None and not args.batch_list and "ssgd" in names:
                total += STARTUP_S + short * step_estimate(prev, label, batch, "ssgd")  # the batch probe
            for _, name in interleave(names, args.repeats):
                total += STARTUP_S + run_steps * step_estimate(prev, label, batch, name)
        parts[f"throughput {label}"] = total
    return parts


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def print_budget(args: argparse.Namespace) -> None:
    """Log the expected duration of the run (quiet machine), from the previous results in ``--out``/the repo."""
    prev = previous_results(args.out) or previous_results(RESULTS)
    parts: dict[str, float] = {}
    if "throughput" in args.workload_list:
        if prev is None:
            log("budget: no previous results to estimate the throughput phase from")
        else:
            parts.update(estimate_throughput_s(args, strategy_list(args), prev))
    for name in args.workload_list:
        if name in PHASES:
            module = load_phase(name)
            estimate = getattr(module, "estimate_s", None)
            if estimate is not None:
                parts[name] = float(estimate(args))
    if parts:
        detail = ", ".join(f"{k} {v / 60:.1f}" for k, v in parts.items())
        log(f"budget estimate (quiet machine): {sum(parts.values()) / 60:.1f} min ({detail} min)")


def measure(args: argparse.Namespace, shaped: netns.ShapedLink, runner: Runner, out: dict[str, Any]) -> None:
    """Every phase of ``args.workload_list`` in order; the JSON is written after each."""
    if "throughput" in args.workload_list:
        measure_throughput(args, shaped, runner, out)
        write_json(args, out)
    for name in args.workload_list:
        if name == "accuracy":
            measure_accuracy(args, shaped, runner, out)
        elif name in PHASES:
            module = load_phase(name)
            assert module is not None  # parse_args dropped or refused missing phases
            log(f"phase {name} ({PHASES[name]})")
            t0 = time.monotonic()
            try:
                module.measure(args, shaped, runner, out)
            except Exception as e:  # one broken phase must not lose the others' results
                log(f"phase {name} FAILED: {e}")
                out[name] = {"status": "failed", "error": traceback.format_exc()[-TAIL:]}
            out["meta"].setdefault("phase_s", {})[name] = time.monotonic() - t0
        write_json(args, out)


def measure_throughput(args: argparse.Namespace, shaped: netns.ShapedLink, runner: Runner, out: dict[str, Any]) -> None:
    from benchmarks.base.rank import resnet18_grad_bytes

    names = strategy_list(args)
    common = ["--warmup", str(args.warmup), "--steps", str(args.steps)]
    short = ["--warmup", str(min(args.warmup, PROBE_WARMUP)), "--steps", str(min(args.steps, PROBE_STEPS))]

    def throughput(
        rate: int | None, batch: int, name: str, role: str = "compare", round_: int | None = None
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "bandwidth": netns.format_rate(rate),
            "bps": rate,
            "batch_size": batch,
            "strategy": name,
            "role": role,  # "calibration" and "probe" runs are not compared in the report
        }
        if round_ is not None:
            entry["round"] = round_
        t0 = time.monotonic()
        try:
            steps = common if role == "compare" else short
            entry["ranks"] = runner.run("throughput", ["--strategy", name, "--batch-size", str(batch), *steps])
            entry["status"] = "ok"
            sps = sum(r["samples_per_s"] for r in entry["ranks"])
            where = "" if round_ is None else f" round {round_ + 1}/{args.repeats}"
            log(f"  {name:18s} B={batch:<4d} {sps:8.1f} samples/s ({time.monotonic() - t0:.0f} s){where}")
        except RunFailed as e:
            entry.update(status="failed", error=str(e))
            log(f"  {name}: FAILED ({str(e).splitlines()[0]})")
        out["throughput"].append(entry)
        return entry

    nbytes = resnet18_grad_bytes()
    if not args.batch_list and any(r is not None for r in args.grid_rates):  # calibrate the compute-only step
        shaped.shape(None)
        for batch in CALIBRATION_BATCHES:
            throughput(None, batch, "compute_only", role="calibration")
        pts = [
            (e["batch_size"], max(r["step_s"] for r in e["ranks"]))
            for e in out["throughput"]
            if e["role"] == "calibration" and e["status"] == "ok"
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
        if rate not in args.grid_rates:
            log(f"link {label}: all-reduce only (not in --throughput-bandwidths)")
            continue
        batches: dict[str, int] = {}
        if args.batch_list:
            batches = {f"batch {b}": b for b in args.batch_list}
        elif rate is None or link["allreduce"] is None or "calibration" not in out:
            batches = {"default": args.batch_size}
        else:
            cal = out["calibration"]
            chosen = choose_batches(cal["a"], cal["b"], link["allreduce"]["seconds_per_op"])
            batches = {s: chosen[s] for s in args.setting_list}
            if "ssgd" in names:

                def probe(batch: int, rate: int | None = rate) -> dict[str, Any]:
                    return throughput(rate, batch, "ssgd", role="probe")

                link["batch_choice"] = refine_batches(batches, cal, probe)
                batches = {k: v["final"] for k, v in link["batch_choice"].items()}
        link["batches"] = batches
        log(f"link {label}: batches {batches}, {args.repeats} interleaved rounds of {len(names)} strategies")
        for batch in sorted(set(batches.values())):
            for round_, name in interleave(names, args.repeats):
                throughput(rate, batch, name, round_=round_)
        write_json(args, out)


def measure_accuracy(args: argparse.Namespace, shaped: netns.ShapedLink, runner: Runner, out: dict[str, Any]) -> None:
    names = strategy_list(args)
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
    from benchmarks.report import page as report

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
        args.grid_rates = [None]
    from benchmarks.base.baselines import SYNC_EVERY, strategy_kwargs
    from benchmarks.base.rank import versions

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
            "repeats": args.repeats,
            "throughput_bandwidths": [netns.format_rate(r) for r in args.grid_rates if r in args.rates],
            "workloads": args.workload_list,
            "skipped_phases": args.skipped_phases,
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
    if args.skipped_phases:
        why = "; ".join(f"{w}: {PHASE_ERRORS.get(w, '?')}" for w in args.skipped_phases)
        log(f"NOTE: phases {args.skipped_phases} of the default list left out, they cannot be loaded ({why})")
    print_budget(args)
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
