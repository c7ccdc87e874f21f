"""The phase's section of the page (and its plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.workloads.peer.common import IMPLS


def _fmt(s: dict[str, float], digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def _ms(s: dict[str, float] | None) -> str:
    return "-" if s is None else _fmt({k: 1e3 * v for k, v in s.items()}, 0)


def _plot(data: dict[str, Any], img_dir: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = data["links"]
    if not links:
        return None
    fig, axes = plt.subplots(1, len(links), figsize=(6 * len(links), 4), squeeze=False)
    colours = {"ours": "tab:blue", "torchft": "tab:orange"}
    for ax, (bw, link) in zip(axes[0], links.items(), strict=True):
        seen = set()
        for run in link["runs"]:
            if "error" in run:
                continue
            t, v = zip(*run["val_curve"], strict=True)
            label = None if run["impl"] in seen else f"{run['impl']} diloco"
            seen.add(run["impl"])
            ax.plot(t, v, color=colours[run["impl"]], marker=".", alpha=0.8, label=label)
        if "equal_wall_time_s" in link["summary"]:
            ax.axvline(link["summary"]["equal_wall_time_s"], color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{bw}: validation loss, seeds 0..{data['config']['repeats'] - 1}")
        ax.set_xlabel("training wall time (s, evaluation excluded)")
        ax.set_ylabel("validation loss (nats/char)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    img_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(img_dir / "benchmarks_peer.png", dpi=110)
    plt.close(fig)
    return "img/benchmarks_peer.png"


def section(data: dict[str, Any], img_dir: Path) -> str:
    """Markdown for ``data["peer"]``: the table per link, the plot, and how torchft was run."""
    peer = data.get("peer")
    if not peer:
        return ""
    cfg, ver = peer["config"], peer["versions"]
    m = cfg["model"]
    lines = [
        "## A real peer: torchft's DiLoCo",
        "",
        f"Our `diloco` against torchft {ver.get('torchft', '?')}'s `DiLoCo` driven by its real `Manager` and "
        f"lighthouse, on the same emulated link: the character LM (d_model {m['d_model']}, {m['num_layers']} "
        f"layers, {m['nhead']} heads, sequence {m['seq_len']}), batch {cfg['batch_per_rank']} per rank on "
        f"{cfg['world']} ranks, the same initial weights and per-rank batches, inner AdamW lr "
        f"{cfg['inner']['AdamW']['lr']}, outer SGD lr {cfg['outer']['lr']} momentum {cfg['outer']['momentum']} "
        f"Nesterov, `sync_every` {cfg['sync_every']}, {cfg['steps']} steps; {cfg['repeats']} repeats interleaved "
        "(ours, torchft, ours, ...), repeat r with seed r on both sides. samples/s is measured after the first "
        "round (which holds the start-up and torchft's first quorum), over the slower rank; wire MB/step is the "
        "veth's transmitted bytes per step and rank, over the same steps. Validation loss: "
        f"{cfg['val_windows']} fixed windows after every synchronisation, clock stopped; the loss at equal wall "
        "time is read off each curve at the shortest run's training time.",
        "",
        "| link | implementation | samples/s median (min-max) | wire MB/step | val loss at equal wall time "
        "| final val loss | training time (s) | local step (ms) | sync step (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for bw, link in peer["links"].items():
        s = link["summary"]
        for impl in IMPLS:
            if impl not in s:
                continue
            row = s[impl]
            lines.append(
                f"| {bw} | {impl} | {_fmt(row['samples_per_s'])} | {_fmt(row['wire_mb_per_step'], 2)} "
                f"| {_fmt(row['val_loss_at_equal_time'], 3)} | {_fmt(row['final_val_loss'], 3)} "
                f"| {_fmt(row['seconds'])} | {_ms(row.get('local_step_s'))} | {_ms(row.get('sync_step_s'))} |"
            )
    lines.append("")
    for bw, link in peer["links"].items():
        s = link["summary"]
        for run in link["runs"]:
            if "error" in run:
                lines.append(f"- {bw}: {run['impl']} seed {run['seed']} failed: `{run['error'].splitlines()[0]}`")
        if "throughput_ratio" in s:
            verdict = "met" if s["throughput_ratio"] >= 1 else "missed"
            lines.append(
                f"- {bw}: ours / torchft throughput = **{s['throughput_ratio']:.2f}x** (target >= 1: {verdict}); "
                f"validation loss at {s['equal_wall_time_s']:.1f} s: ours "
                f"{s['ours']['val_loss_at_equal_time']['median']:.3f}, torchft "
                f"{s['torchft']['val_loss_at_equal_time']['median']:.3f} (medians over seeds)."
            )
    for bw, link in peer["links"].items():
        totals = {}
        for impl in IMPLS:
            cpu = link["summary"].get(impl, {}).get("cpu_ms_per_step_by_thread")
            if cpu:
                totals[impl] = sum(cpu.values())
                top = ", ".join(f"`{name}` {ms:.1f}" for name, ms in list(cpu.items())[:5])
                lines.append(f"- {bw}, {impl}: CPU ms per step by thread (rank 0, `/proc/self/task`): {top}.")
        if len(totals) == 2:
            lines.append(
                f"- {bw}: CPU per step, all threads: ours {totals['ours']:.0f} ms, torchft {totals['torchft']:.0f} ms "
                f"(ratio {totals['ours'] / totals['torchft']:.2f}); where the wall-time ratio differs from this, "
                "the difference is waiting (network, or CPU taken by other processes), not work."
            )
    img = _plot(peer, img_dir)
    if img:
        lines += ["", f"![validation loss against wall time, ours and torchft]({img})"]
    lines += [
        "",
        "How torchft was run: every rank is a replica group of one (`Manager(rank=0, world_size=1, "
        "min_replica_size=2, use_async_quorum=False, init_sync=False)`, its own `TCPStore` and `ManagerServer`); "
        "the runner starts `torchft_lighthouse --min_replicas 2` inside rank 0's network namespace on rank 0's "
        "address before each torchft run and stops it after. At every synchronisation torchft's `DiLoCo` does "
        "what ours does not: it asks the lighthouse for a quorum (`start_quorum`, a round trip through its "
        "ManagerServer and the lighthouse, and a reconfiguration of the gloo group when the membership "
        "changes), keeps a backup copy of the parameters to roll back to, averages the pseudo-gradient with "
        "`Manager.allreduce` (per-tensor, wrapped in futures that catch errors) and then votes on `should_commit` "
        "before the outer step; between synchronisations each ManagerServer heartbeats to the lighthouse every "
        "100 ms. Ours averages the pseudo-gradient in buckets on a fixed gloo group and has no fault tolerance. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in ver.items())}. Phase time: {peer['seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"
