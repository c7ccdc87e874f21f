"""Turns a results JSON of :mod:`benchmarks.run` into ``docs/benchmarks.md`` and PNG plots.

Everything here is derived from the JSON, so ``python -m benchmarks.run --report-only`` rebuilds
the page without measuring again. Metrics (per run, ranks combined):

* samples/s: the ranks' samples/s summed (each rank: batch x timed steps / window wall time);
* x ssgd: samples/s over ``ssgd``'s at the same (bandwidth, batch);
* x compute: samples/s over the compute-only bound's samples/s at the same batch (overlap efficiency);
* x limit: samples/s over the strategy's own limit, ``min(compute-only samples/s, world x batch / t_link)``,
  with ``t_link`` = payload bytes the strategy all-reduces per step / all-reduce throughput measured on
  the same link in the same run (the bound is measured like the strategy, so it is exactly 1 for itself);
* blocked: time per step the rank waited for communication (:class:`lightning_delayed.CommMonitor`);
* exposed: step time minus the compute-only step time (communication not hidden, any family);
* all-reduced: payload bytes per step per rank (CommMonitor); wire: bytes the rank's veth sent per step;
* peak RSS: the larger ``ru_maxrss`` of the two ranks.

Repeats: each throughput cell is measured ``--repeats`` times in interleaved rounds (every strategy and
the compute-only bound once per round, same order), each run ``--warmup`` untimed then ``--steps``
timed steps. x ssgd, x compute and x limit are computed per round against that round's ssgd and
compute-only runs; a cell shows the median and [min, max] over the rounds (times, bytes: the median).
Noise rule: a cell whose median x limit exceeds 1.05 is faster than its own bound allows; it is
marked noise and left out of the targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.base.phase import Phase
from benchmarks.base.schema import DEFAULTS
from benchmarks.report.metrics import MB, NOISE_LIMIT, accuracy_summary, cells, settings, summarize
from benchmarks.report.plots import IMG, plots
from benchmarks.report.rerun import cpu_split_table, detail_section
from benchmarks.report.rerun import section as rerun_section
from benchmarks.report.verdicts import targets, when_not_to_use


def _f(x: Any, fmt: str, scale: float = 1.0) -> str:
    return "n/a" if x is None else format(x * scale, fmt)


def _spread(cell: dict[str, Any], key: str, fmt: str) -> str:
    """``median [min, max]``; the median alone for a single repeat."""
    value, span = cell.get(key), cell.get(f"{key}_range")
    if value is None:
        return "n/a"
    if span is None or span[0] == span[1]:
        return format(value, fmt)
    return f"{format(value, fmt)} [{format(span[0], fmt)}, {format(span[1], fmt)}]"


def markdown(data: dict[str, Any], images: list[str], sections: list[str] | None = None) -> str:
    meta = data["meta"]
    rows = cells(summarize(data))
    acc = accuracy_summary(data)
    m, v = meta["machine"], meta["versions"]
    out = ["# Benchmarks on a slow network (measured)", ""]
    if meta.get("quick"):
        out += [
            "> **Quick smoke run** (`--quick`): tiny step counts; the numbers only show that the pipeline works.",
            "",
        ]
    gpu = meta.get("accelerator", DEFAULTS["meta.accelerator"]) == "gpu"
    link_kind = (
        "two network namespaces joined by a veth pair shaped with `tc tbf` on both ends"
        if meta["emulated"]
        else f"the GPUs' own interconnect, not emulated ({meta['fallback_reason']})"
        if gpu
        else f"loopback only ({meta['fallback_reason']})"
    )
    where = "one CUDA device each, NCCL" if gpu else "one compute thread each (`OMP_NUM_THREADS=1`), gloo"
    out += [
        f"Measured {meta['date']} on {m['cpu']} ({m['cores']} cores, "
        f"{_f(m.get('memory_bytes'), '.0f', 1 / 2**30)} GiB, "
        f"{m['system']}); torch {v['torch']}, lightning {v['lightning']}, torchvision {v['torchvision']}, "
        f"lightning_delayed {v['lightning_delayed']}, Python {v['python']}.",
        "",
        *(
            []
            if gpu
            else [
                "No GPU was lent for these figures: every rank ran on a CPU core. `--accelerator gpu` runs the same "
                "harness with one CUDA device per rank and NCCL, without link emulation.",
                "",
            ]
        ),
        f"2 ranks, {where}, on {link_kind}. Bandwidths: "
        f"{', '.join(meta['bandwidths'])}. Throughput: torchvision ResNet-18 (`num_classes=10`) on random 3x32x32 "
        f"inputs, SGD lr 0.01 momentum 0.9, {meta['warmup']} warm-up steps then {meta['steps']} timed steps, "
        f"{meta.get('repeats', 1)} interleaved repeat(s) per cell on "
        f"{', '.join(meta.get('throughput_bandwidths', meta['bandwidths']))} (the other links: all-reduce only). "
        f"Periodic strategies average every {meta['sync_every']} steps. Strategy arguments: "
        + ", ".join(f"`{n}` {kw}" for n, kw in meta["strategy_kwargs"].items() if kw)
        + ".",
        "",
        f"Reproduce: `{meta['command']}` (as root for the emulated links); rebuild this page from the JSON with "
        f"`python -m benchmarks.run --report-only`. Raw results: `{Path(meta['json_path']).name}` in "
        "`benchmarks/results/`. Total run time: " + _f(meta.get("total_s"), ".0f") + " s.",
        "",
        *[
            (
                f"The throughput grid on {name.split(' ', 1)[1]} was measured again after this run, alone "
                if name.startswith("throughput ")
                else f"Phase `{name}` was measured again after this run, alone "
            )
            + f"(`{r['command']}`, {r['date']}, {_f(r.get('seconds'), '.0f')} s): {r['why']}\n"
            for name, r in meta.get("reruns", {}).items()
        ],
        "## Links",
        "",
        "| bandwidth | all-reduce throughput (MB/s) | all-reduce of ResNet-18 gradient (ms) | batch sizes measured |",
        "|---|---:|---:|---|",
    ]
    for link in data["links"]:
        ar = link.get("allreduce")
        batches = ", ".join(f"{k}: {b}" for k, b in link.get("batches", {}).items())
        out.append(
            f"| {link['bandwidth']} | {_f(ar and ar['bytes_per_s'], '.1f', 1 / MB)} | "
            f"{_f(ar and ar['seconds_per_op'], '.0f', 1000)} | {batches} |"
        )
    sets = {(s["bandwidth"], s["batch_size"]): s["ssgd_over_compute"] for s in settings(rows)}
    repeats = meta.get("repeats", 1)
    out += [
        "",
        "## Throughput",
        "",
        f"Each cell: {repeats} repeat(s), median and [min, max]. The rounds are interleaved: every strategy, "
        "the compute-only bound included, runs once per round in the same order (A B C, A B C, ...), so a slow "
        "drift of the machine hits all alike. Ratios are taken per round against the same round's `ssgd` and "
        "compute-only runs, then summarised. A cell whose median x limit is above "
        f"{NOISE_LIMIT} (faster than its own bound allows) is marked **noise**: it shows the measurement's error, "
        "not the method, and is left out of the targets.",
        "",
    ]
    for key in dict.fromkeys((r["bandwidth"], r["batch_size"]) for r in rows):
        ratio = sets.get(key)
        note = f" (ssgd step / compute-only step = {ratio:.2f})" if ratio else ""
        out += [
            f"### {key[0]}, batch {key[1]} per rank{note}",
            "",
            "| strategy | samples/s | x ssgd | x compute | x limit | note | step (ms) | blocked (ms/step) "
            "| exposed (ms/step) | all-reduced (MB/step) | wire (MB/step) | peak RSS (MB) |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            if (r["bandwidth"], r["batch_size"]) != key:
                continue
            if "samples_per_s" not in r:
                out.append(f"| `{r['strategy']}` | failed | | | | | | | | | | |")
                continue
            notes = (["**noise**"] if r.get("noise") else []) + (
                [f"{r['failed']} run(s) failed"] if r.get("failed") else []
            )
            out.append(
                f"| `{r['strategy']}` | {_spread(r, 'samples_per_s', '.1f')} | {_spread(r, 'x_ssgd', '.2f')} | "
                f"{_spread(r, 'x_compute', '.2f')} | {_spread(r, 'x_limit', '.2f')} | {', '.join(notes)} | "
                f"{r['step_s'] * 1000:.0f} | {r['blocked_s'] * 1000:.1f} | {_f(r.get('exposed_s'), '.0f', 1000)} | "
                f"{r['bytes'] / MB:.2f} | {_f(r.get('wire_bytes'), '.2f', 1 / MB)} | {r['peak_rss_mb']:.0f} |"
            )
        out.append("")
        split = cpu_split_table([r for r in rows if (r["bandwidth"], r["batch_size"]) == key])
        out += [f"CPU per step by thread (`--cpu-split`), {key[0]}, batch {key[1]}:", "", *split, ""] if split else []
    out += rerun_section(data)
    out += detail_section(data)
    if acc:
        out += [
            "## Accuracy and time to accuracy (digits CNN)",
            "",
            f"{meta['epochs']} epochs, batch 32 per rank, seeds {meta['seeds']}, "
            f"link {data['accuracy'][0]['bandwidth']}. "
            f"Target accuracy {meta['target_acc']}. Test accuracy is measured after every epoch on the consensus "
            "model (ours) or each rank's own model with synchronised metrics (Lightning's strategies).",
            "",
            "| strategy | test accuracy (mean ± sd) | diff to ssgd (points) | wall time, all epochs (s) | "
            "wall time to target (s) |",
            "|---|---:|---:|---:|---:|",
        ]
        for a in acc:
            if "acc" not in a:
                out.append(f"| `{a['strategy']}` | failed | | | |")
                continue
            reach = (
                _f(a.get("to_target_s"), ".1f")
                if a["reached"] == a["seeds"]
                else f"not reached ({a['reached']}/{a['seeds']} seeds)"
            )
            out.append(
                f"| `{a['strategy']}` | {a['acc']:.4f} ± {a['acc_std']:.4f} | {_f(a.get('delta_points'), '+.2f')} | "
                f"{a['wall_s']:.1f} | {reach} |"
            )
        out.append("")
    lines = targets(rows, acc)
    if lines:
        out += [
            "## Targets (ratios measured side by side in this run)",
            "",
            "| target | measured | verdict |",
            "|---|---|---|",
            *[f"| {t} | {m_} | {v_} |" for t, m_, v_ in lines],
            "",
        ]
        noise = [f"`{r['strategy']}` ({r['bandwidth']}, B={r['batch_size']})" for r in rows if r.get("noise")]
        if noise:
            out += [f"Left out as noise (median x limit > {NOISE_LIMIT}): {', '.join(noise)}.", ""]
    avoid = when_not_to_use(rows, data.get("own_cost") if isinstance(data.get("own_cost"), dict) else None)
    if avoid:
        out += ["## When not to use a strategy (measured in this run)", "", *[f"- {t}" for t in avoid], ""]
    failed = [e for e in data["throughput"] + data["accuracy"] if e.get("status") == "failed"]
    if failed:
        out += ["## Failed runs", ""]
        for e in failed:
            first = (e.get("error") or "").splitlines()[:1]
            out.append(
                f"- `{e['strategy']}` ({e.get('bandwidth')}, B={e.get('batch_size', 32)}"
                + (f", round {e['round'] + 1}" if "round" in e else "")
                + f"): {first[0] if first else '?'}"
            )
        out.append("")
    out += [f"![{Path(i).stem}]({i})" for i in images] + [""]
    out += sections or []
    out += [
        "## How each number is measured",
        "",
        (__doc__ or "").split("ranks combined):", 1)[-1].strip(),
        "",
        "Blocked time by family: our strategies time every wait on a collective (`comm/buckets.py` `wait_work`); "
        "DDP's own C++ all-reduce (`ssgd`, `ddp`) is read from DDP's reducer timers (comm end minus autograd "
        "end); post-local SGD's blocking average is timed whole. Bytes: our collectives count their buffers; "
        "DDP's reduction counts the gradient bytes each step; the veth counters measure what really crossed "
        "the link (both directions are shaped, so one rank's tx is one direction's load).",
        "",
    ]
    return "\n".join(out)


def phase_sections(data: dict[str, Any], img_dir: Path, phases: Mapping[str, Phase | str]) -> list[str]:
    """The markdown of every phase present in ``data``, from the phase's own ``section``, in ``phases`` order.

    ``phases`` maps a name to its declared :class:`Phase`, or to the module path of one that could
    not be loaded here (the section says so instead of failing the page).
    """
    out = []
    for name, phase in phases.items():
        if name not in data:
            continue
        if data[name].get("status") == "failed":
            first = (data[name].get("error") or "?").strip().splitlines()[-1:]
            out.append(f"## Phase `{name}`\n\nFailed: `{first[0] if first else '?'}` (see the JSON).\n")
            continue
        if not isinstance(phase, Phase):
            out.append(f"## Phase `{name}`\n\nNot rendered: module `{phase}` cannot be loaded in this checkout.\n")
            continue
        out.append(phase.section(data, img_dir).rstrip() + "\n")
    return out


def write_report(data: dict[str, Any], docs: Path, phases: Mapping[str, Phase | str]) -> None:
    """``docs`` (markdown) and its plots in ``docs.parent / "img"``, from one results dict."""
    rows = cells(summarize(data))
    img_dir = docs.parent / IMG
    images = plots(data, rows, accuracy_summary(data), img_dir)
    sections = phase_sections(data, img_dir, phases)
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(markdown(data, images, sections))
