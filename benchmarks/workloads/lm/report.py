"""The phase's section of the page (and its plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.workloads.lm.common import NAME


def _fmt(s: dict[str, float] | None, fmt: str = "{:.1f}") -> str:
    if s is None:
        return "n/a"
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def plot(phase: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, entry in enumerate(e for e in phase["entries"] if e["status"] == "ok"):
        color = colors[i % len(colors)]
        for j, run in enumerate(entry["runs"]):
            xs = [0.0] + [p["wall_s"] for p in run["points"]]
            ys = [run["initial_loss"]] + [p["loss"] for p in run["points"]]
            # Steps: a validation's loss holds until the next one (diloco's model only moves at its syncs).
            label = entry["strategy"] if j == 0 else None
            ax.plot(xs, ys, color=color, lw=1.0, alpha=0.7, drawstyle="steps-post", label=label)
    ax.axhline(phase["target_loss"], color="grey", ls="--", lw=1, label=f"target {phase['target_loss']}")
    ax.set_xlabel("training wall time (s, validation excluded)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_ylim(top=min(3.3, ax.get_ylim()[1]))  # the start (~4.6 nats/char) hides the differences
    ax.set_title(f"Character-level transformer at {phase['bandwidth']}, one line per seed (initial loss off the top)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(data: dict[str, Any], img_dir: Path) -> str:
    phase = data.get(NAME)
    if not phase:
        return ""
    m, d = phase["model"], phase["data"]
    params = next((e["params"] for e in phase["entries"] if e.get("params")), None)
    lines = [
        "## A real workload: a character-level language model",
        "",
        f"A decoder-only character transformer (`benchmarks/charlm.py`: d_model {m['d_model']}, {m['num_layers']} "
        f"layers, {m['nhead']} heads, context {m['seq_len']}, "
        + (f"{params / 1e6:.2f} M parameters" if params else "")
        + f") trained on {d['source']} ({d['files']} files, {d['train_chars']:,} training and {d['val_chars']:,} "
        f"validation characters; split: {d['split']}; vocabulary of {d['vocab_size']} tokens; text SHA-256 "
        f"`{d['sha256']}`). 2 ranks on the emulated {phase['bandwidth']} link"
        + ("" if phase["emulated"] else " (NOT emulated: loopback)")
        + f", batch {phase['batch_size']} windows per rank, {phase['optimizer']}; seeds {phase['seeds']}.",
        "",
    ]
    if "odsgd" in phase["sync_every"] or any(e["strategy"] == "odsgd" for e in phase["entries"]):
        lines.append(
            "`odsgd`'s local compensation step is plain SGD at the optimizer's learning rate, small with AdamW: "
            "it trains like AdamW on a one-step-stale mean gradient."
        )
    if phase["sync_every"]:
        lines.append(
            "Sync periods: "
            + ", ".join(f"`{n}` {h}" for n, h in phase["sync_every"].items())
            + " steps (the default of 50 of diloco and streaming_diloco is too long for a run this short)."
        )
    lines += [
        f"Each run trains for {phase['max_wall_s']:.0f} s of training wall time (at most {phase['max_steps']} "
        f"steps); every {phase['val_every']} steps each rank computes the loss on {phase['val_windows']} fixed "
        "validation windows of the model its strategy validates (ours: the average over the ranks; post-local "
        "SGD: its own), and the mean over the ranks is plotted; the clock is paused while validating.",
        f"Time to target: training wall time of the first validation at or below **{phase['target_loss']}** "
        "nats/char; median (min to max) over the seeds.",
        "",
        "| strategy | reached | time to target (s) | final val loss | steps | s/step |",
        "|---|---|---|---|---|---|",
    ]
    for row in phase.get("summary", []):
        reached = f"{row['reached']}/{row['seeds']}"
        ttt = _fmt(row["time_to_target_s"])
        if row["not_reached"]:
            ttt += " — not reached: " + ", ".join(
                f"seed {n['seed']} (final {n['final_loss']:.3f})" for n in row["not_reached"] if n["final_loss"]
            )
        lines.append(
            f"| `{row['strategy']}` | {reached} | {ttt} | {_fmt(row['final_loss'], '{:.3f}')} | "
            f"{_fmt(row['steps'], '{:.0f}')} | {_fmt(row['step_s'], '{:.3f}')} |"
        )
    for e in phase["entries"]:
        if e["status"] != "ok":
            lines.append(f"| `{e['strategy']}` | failed | n/a | n/a | n/a | n/a |")
    img_dir.mkdir(parents=True, exist_ok=True)
    plot(phase, img_dir / "benchmarks_lm.png")
    lines += ["", "![validation loss against wall time](img/benchmarks_lm.png)", ""]
    return "\n".join(lines)
