"""The phase's section of the page (and its plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.workloads.own_cost.common import BOUND, NAME
from benchmarks.workloads.own_work import table as own_work_table


def own_cost_advice(d: dict[str, Any]) -> list[str]:
    """One sentence per strategy that missed the own-cost target: when not to use it, from its own work.

    The own work is the price of hiding communication: a fixed number of passes over the weights per
    step (a periodic rule's, per H steps), independent of the batch. A strategy cannot win where it
    has less communication to hide than that: where ``ssgd``'s step is less than the own work longer
    than the compute-only step.
    """
    from benchmarks.workloads.own_work import PER_STEP

    work = d.get("own_work") or {}
    out = []
    for name in d.get("strategies", []):
        cell, measured = d.get("cells", {}).get(name, {}), work.get("cells", {}).get(name)
        if cell.get("target_met", True) or not measured:
            continue
        own, passes = 1000 * measured["own_s"]["median"], measured["passes"]
        if name == "ssgd":
            out.append(
                f"`ssgd` with a custom `comm_hook` or `compression` (its hook path) pays {passes:.1f} whole-model "
                f"passes per step ({own:.0f} ms here): the hook's copy and the copy of the mean into `.grad`. Without "
                "either it runs DDP's own reduction and pays none: keep the default unless the hook saves more "
                "communication time than that."
            )
            continue
        text = (
            f"`{name}`: its own work is {passes:.1f} whole-model passes per step ({own:.0f} ms here); do not use it "
            f"where `ssgd`'s step is less than about {own:.0f} ms longer than the compute-only step: there is less "
            "communication to hide than it costs. Its share falls as the step grows (larger batches, more compute "
            "per weight)"
        )
        periodic = f" and as `sync_every` grows (paid once per {work['sync_every']} steps here)."
        text += "." if name in PER_STEP else periodic
        out.append(text)
    return out


def _pct(x: float) -> str:
    return f"{100 * x:+.1f} %"


def _range(stats: dict[str, float]) -> str:
    return f"{_pct(stats['median'])} [{_pct(stats['min'])} .. {_pct(stats['max'])}]"


def section(data: dict[str, Any], img_dir: Path) -> str:
    """Markdown: the own-cost table, and the per-thread CPU split of every cell."""
    d = data.get(NAME)
    if not d:
        return ""
    cells, bound = d["cells"], d["cells"][BOUND]["step_s"]
    lines = [
        "## The algorithm's own cost (communication made free)",
        "",
        f"Every strategy that takes a `comm_hook` ran with `FreeHook` (`benchmarks/own_cost.py`): the average "
        f"completes at once with the rank's own values, so nothing crosses the network. ResNet-18, batch "
        f"{d['batch_size']}, one thread, 2 ranks; {d['warmup']} warm-up and {d['steps']} timed steps per fit; "
        f"{d['repeats']} rounds, each fitting {BOUND} between every two strategies ({BOUND} A {BOUND} B ... "
        f"{BOUND}). A fit's step is the median over its windows of H steps of the window's mean step. Own cost = "
        f"step / mean of the two {BOUND} fits beside it - 1: median [min-max] over the rounds. "
        f"Target: <= {100 * d['target']:.0f} %.",
        "",
        "| strategy | compute-only step beside it (ms) | step, free comm (ms) | own cost median [min-max] | target met "
        "| own cost in CPU time median [min-max] |",
        "|---|---:|---:|---:|:---:|---:|",
    ]
    cpu_cells = d.get("cpu_cells", {})
    for name in d["strategies"]:
        c = cells.get(name)
        if c is None or "own_cost" not in c:
            continue
        oc = c["own_cost"]
        beside = c.get("bound_s", bound)
        lines.append(
            f"| `{name}` | {1000 * beside['median']:.0f} | {1000 * c['step_s']['median']:.0f} "
            f"| {_range(oc)} | {'yes' if c['target_met'] else 'no'} "
            f"| {_range(cpu_cells[name]['own_cost']) if 'own_cost' in cpu_cells.get(name, {}) else ''} |"
        )
    for name, why in d.get("not_measured", {}).items():
        lines.append(f"| `{name}` | | | not measured: {why} | | |")
    lines += [
        "",
        "The last column is the same ratio on the CPU seconds of all the rank's threads: it does not count "
        "time spent waiting for a core, so it is the steadier figure on a shared machine.",
        "",
        "`ssgd` here is its custom-hook path (`DDPGradientHook`); by default it runs DDP's own all-reduce, "
        "which with communication made free is the compute-only bound itself.",
        "",
        "CPU seconds per step by thread (median over ranks and rounds, from `/proc/<pid>/task/*/stat`): the main "
        "thread runs forward, backward, the optimizer and the algorithm; its excess over compute-only is the "
        "algorithm's own work.",
        "",
        "| strategy | main (ms) | of which algorithm (ms) | gloo threads (ms) | other threads (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    base = d["cpu_s_per_step"][BOUND]["main"]
    for name in [BOUND, *d["strategies"]]:
        c = d["cpu_s_per_step"].get(name)
        if c is None:
            continue
        algo = "" if name == BOUND else f"{1000 * (c['main'] - base):+.0f}"
        lines.append(
            f"| `{name}` | {1000 * c['main']:.0f} | {algo} | {1000 * c['gloo']:.0f} | {1000 * c['other']:.0f} |"
        )
    work = d.get("own_work")
    if work:
        lines += [
            "",
            "Each rule's own work in isolation (`benchmarks/own_work.py`): the core rule with `FreeHook`, "
            "driven through its optimizer-step hooks on ResNet-18's weights, minus the bare optimizer step; "
            "no forward, backward or second rank, so none of their noise. A whole-model pass is one "
            f"elementwise `torch.add` over the 11.2 M weights: {1000 * work['pass_s']:.1f} ms on one thread. "
            f"Median [min-max] of {work['rounds']} interleaved rounds of {work['periods']} periods of "
            f"H = {work['sync_every']} steps.",
            "",
            *own_work_table(work, bound["median"]),
            "",
            "The target allows "
            f"{d['target'] * bound['median'] / work['pass_s']:.1f} whole-model passes per step on this machine. "
            "A gradient rule's hook copies the gradient out of DDP's bucket every step (the contract: "
            "the average is of a private copy); `odsgd` then needs its local step "
            "`w <- W - lr * g`, two passes with the specified roundings (a one-pass `torch.add(W, g, alpha=-lr)` "
            "rounds once, FMA, and would not match the rule bit for bit). A periodic rule pays a snapshot, "
            "the hook's copy and its merge once per H steps; DiLoCo adds the outer Nesterov step. "
            "What is left is passes over memory on one core, not Python: none of it scales with the batch, "
            "so its share shrinks as the step grows (on a GPU, a pass over these 45 MB at 2-3 TB/s of memory "
            "bandwidth is about 40 microseconds: arithmetic, not measured here).",
        ]
        avoid = own_cost_advice(d)
        if avoid:
            lines += ["", "When not to use a strategy that missed the target, from its own work:", ""]
            lines += [f"- {sentence}" for sentence in avoid]
    split = d.get("unshaped_split")
    if split:
        ssgd = split.get("ssgd", {}).get("step_s")
        lines += [
            "",
            "Where the target is missed: the same strategies with real communication on the unshaped link "
            "(the default all-reduce; one fit each), CPU seconds per step by thread. `ssgd` is DDP's own.",
            "",
            "| strategy | step (ms) | vs `ssgd` | main (ms) | gloo threads (ms) | other threads (ms) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, c in split.items():
            ratio = f"{ssgd / c['step_s']:.2f}x" if ssgd else ""
            cpu_ms = [f"{1000 * c['cpu_s_per_step'][k]:.0f}" for k in ("main", "gloo", "other")]
            lines.append(f"| `{name}` | {1000 * c['step_s']:.0f} | {ratio} | {' | '.join(cpu_ms)} |")
    return "\n".join(lines) + "\n"
