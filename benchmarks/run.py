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
real cluster, run the same worker (``--worker``, see :mod:`benchmarks.base.tasks`) under torchrun or
your scheduler.

Plan of a full run, all on the same link(s) in one go (``--workloads`` picks the phases, in order):

1. ``throughput`` (:mod:`benchmarks.workloads.throughput`): per bandwidth the all-reduce of a
   ResNet-18-sized buffer, the compute-only calibration and batch choice, then ResNet-18 per
   (bandwidth of ``--throughput-bandwidths``, batch) in ``--repeats`` interleaved rounds of every
   strategy (A B C, A B C, ...), the compute-only bound included;
2. the phases of :data:`PHASES` (``own_cost``, ``lm``, ``peer``, ``scaling``), each declared once in
   its own module (:class:`benchmarks.base.phase.Phase`);
3. ``accuracy`` (:mod:`benchmarks.workloads.accuracy`, not in the default): the digits CNN.

``--accelerator gpu`` runs every rank on its own CUDA device (``CUDA_VISIBLE_DEVICES`` = its rank,
NCCL): the GPUs' own interconnect is the link, so nothing is emulated (no namespaces, one unshaped
link), and the results' ``meta.accelerator`` says so.

The JSON is written after every phase, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.base import netns, schema
from benchmarks.base.baselines import strategy_list
from benchmarks.base.launch import Runner, log, machine, measured_link
from benchmarks.base.phase import Phase
from benchmarks.base.rank import REPO, gpu_problem
from benchmarks.base.tasks import add_worker_args, run_worker
from benchmarks.workloads import accuracy, throughput

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
"""Phase name -> the module that declares it (``PHASE = Phase(...)``, :class:`benchmarks.base.phase.Phase`).

Adding a workload: its module, and one line here. Modules are imported only when asked for.
"""
TAIL = 3000


PHASE_ERRORS: dict[str, str] = {}
"""Why a phase's module could not be imported (reported only if that phase is asked for)."""


def load_phase(name: str) -> Phase | None:
    """The declared phase ``name``, or None if its module cannot be imported (a dependency missing).

    Raises:
        TypeError: the module declares no ``PHASE``, or one of another name.
    """
    try:
        module = importlib.import_module(PHASES[name])
    except ImportError as e:
        PHASE_ERRORS[name] = f"{type(e).__name__}: {e}"
        return None
    phase = getattr(module, "PHASE", None)
    if not isinstance(phase, Phase) or phase.name != name:
        raise TypeError(f"module {PHASES[name]} must declare PHASE = Phase(name={name!r}, ...), got {phase!r}")
    return phase


def phases() -> dict[str, Phase | str]:
    """Every registered phase in registry order (for the report): its declaration, else its module's path."""
    return {name: load_phase(name) or module for name, module in PHASES.items()}


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
        phase = load_phase(name)
        if phase is None:
            missing.add(name)
        else:
            phase.add_args(p)
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
    if not settings or any(s not in throughput.TARGET_RATIOS for s in settings):
        p.error(f"--batch-settings must list of {list(throughput.TARGET_RATIOS)}, got {args.batch_settings!r}")
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
    if args.accelerator == "gpu" and not args.worker and not args.report_only:
        problem = gpu_problem(2)
        if problem:
            p.error(f"--accelerator gpu: {problem}")
    return args


def print_budget(args: argparse.Namespace) -> None:
    """Log the expected duration of the run (quiet machine), from the previous results in ``--out``/the repo."""
    prev = throughput.previous_results(args.out) or throughput.previous_results(RESULTS)
    parts: dict[str, float] = {}
    if "throughput" in args.workload_list:
        if prev is None:
            log("budget: no previous results to estimate the throughput phase from")
        else:
            names = strategy_list(args.strategies)
            parts.update(throughput.estimate_throughput_s(args, names, prev))
    for name in args.workload_list:
        if name in PHASES and (phase := load_phase(name)) is not None:
            parts[name] = float(phase.estimate_s(args))
    if parts:
        detail = ", ".join(f"{k} {v / 60:.1f}" for k, v in parts.items())
        log(f"budget estimate (quiet machine): {sum(parts.values()) / 60:.1f} min ({detail} min)")


def measure(args: argparse.Namespace, shaped: netns.ShapedLink, runner: Runner, out: dict[str, Any]) -> None:
    """Every phase of ``args.workload_list`` in order; the JSON is written after each."""
    if "throughput" in args.workload_list:
        throughput.measure(args, shaped, runner, out, write_json)
        write_json(args, out)
    for name in args.workload_list:
        if name == "accuracy":
            accuracy.measure(args, shaped, runner, out, write_json)
        elif name in PHASES:
            phase = load_phase(name)
            assert phase is not None  # parse_args dropped or refused missing phases
            log(f"phase {name} ({PHASES[name]})")
            t0 = time.monotonic()
            try:
                phase.measure(args, shaped, runner, out)
            except Exception as e:  # one broken phase must not lose the others' results
                log(f"phase {name} FAILED: {e}")
                out[name] = {"status": "failed", "error": traceback.format_exc()[-TAIL:]}
            out["meta"].setdefault("phase_s", {})[name] = time.monotonic() - t0
        write_json(args, out)


def write_json(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Validate the results (:mod:`benchmarks.base.schema`) and write them to ``meta.json_path``."""
    args.out.mkdir(parents=True, exist_ok=True)
    schema.write(Path(out["meta"]["json_path"]), out, PHASES)


def link_plan(args: argparse.Namespace) -> tuple[bool, str]:
    """Whether the links are emulated (network namespaces), and why not.

    On GPUs the ranks talk over NCCL on the machine's own interconnect: the veth pairs of the
    namespaces would not carry that traffic, so there is nothing to shape.
    """
    if args.accelerator == "gpu":
        return False, "--accelerator gpu: NCCL over the GPUs' own interconnect, no link emulation"
    if args.loopback:
        return False, "--loopback given"
    return netns.can_emulate()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    from benchmarks.report import page as report

    if args.report_only:
        path = schema.latest(args.out)
        report.write_report(schema.load(path, PHASES), args.docs, phases())
        log(f"report rebuilt from {path} -> {args.docs}")
        return 0

    ok, why = link_plan(args)
    if not ok and (args.accelerator == "gpu" or any(r is not None for r in args.rates)):
        where = "on the GPUs" if args.accelerator == "gpu" else "on loopback only"
        log(f"NOTE: {why}; running {where}, unshaped (bandwidths {args.bandwidths} ignored)")
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
            "accelerator": args.accelerator,
            "quick": args.quick,
            "bandwidths": [netns.format_rate(r) for r in args.rates],
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "throughput_bandwidths": [netns.format_rate(r) for r in args.grid_rates if r in args.rates],
            "workloads": args.workload_list,
            "skipped_phases": args.skipped_phases,
            "sync_every": SYNC_EVERY,
            "strategy_kwargs": {n: strategy_kwargs(n) for n in strategy_list(args.strategies)},
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
        causes = "; ".join(f"{w}: {PHASE_ERRORS.get(w, '?')}" for w in args.skipped_phases)
        log(f"NOTE: phases {args.skipped_phases} of the default list left out, they cannot be loaded ({causes})")
    print_budget(args)
    start = time.monotonic()
    # SIGTERM must run the finally blocks below (namespace removal) like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with measured_link(args.timeout, accelerator=args.accelerator, plan=(ok, why), note=False) as (shaped, runner):
            measure(args, shaped, runner, out)
    finally:
        signal.signal(signal.SIGTERM, previous)
    out["meta"]["total_s"] = time.monotonic() - start
    write_json(args, out)
    report.write_report(out, args.docs, phases())
    log(f"done in {out['meta']['total_s']:.0f} s: {out['meta']['json_path']} and {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
