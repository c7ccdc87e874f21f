"""The page's own plots: throughput against bandwidth, and accuracy against wall time."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.report.metrics import find_cell

IMG = "img"


def plots(data: dict[str, Any], rows: list[dict[str, Any]], acc_data: list[dict[str, Any]], img_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    written = []
    order = {link["bandwidth"]: -(link["bps"] or float("inf")) for link in data["links"]}
    ok_rows = [r for r in rows if "samples_per_s" in r]
    keys = sorted({(r["bandwidth"], r["batch_size"]) for r in ok_rows}, key=lambda k: (order.get(k[0], 0), k[1]))
    if keys:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
        names = list(dict.fromkeys(r["strategy"] for r in ok_rows))
        for name in names:
            found = [(i, find_cell(rows, bw, b, name)) for i, (bw, b) in enumerate(keys)]
            pts = [(i, r) for i, r in found if r is not None]
            style = "--" if name in ("ddp", "post_local_sgd", "compute_only") else "-"
            for ax, key in zip(axes, ("samples_per_s", "x_compute"), strict=True):
                got = [(i, r) for i, r in pts if r.get(key) is not None]
                med = [r[key] for _, r in got]
                span = [r.get(f"{key}_range") or (r[key], r[key]) for _, r in got]
                err = [
                    [m - lo for m, (lo, _) in zip(med, span, strict=True)],
                    [hi - m for m, (_, hi) in zip(med, span, strict=True)],
                ]
                ax.errorbar([i for i, _ in got], med, yerr=err, fmt=style, marker="o", capsize=3, label=name)
        for ax, ylabel in zip(axes, ("samples/s (2 ranks)", "samples/s / compute-only bound"), strict=True):
            ax.set_xticks(range(len(keys)), [f"{bw}\nB={b}" for bw, b in keys])
            ax.set_xlabel("link bandwidth, batch per rank")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0].set_yscale("log")
        axes[1].legend(fontsize=8, loc="best")
        fig.suptitle(
            "ResNet-18, CIFAR-shaped inputs: throughput against bandwidth (median, bars: min to max of repeats)"
        )
        fig.tight_layout()
        fig.savefig(img_dir / "benchmarks_throughput.png", dpi=110)
        plt.close(fig)
        written.append(f"{IMG}/benchmarks_throughput.png")
    if data["accuracy"]:
        fig, ax = plt.subplots(figsize=(7, 4.8))
        for e in data["accuracy"]:
            runs = [r["epochs"] for r in e["runs"] if r["epochs"]]
            if not runs:
                continue
            n = min(len(r) for r in runs)
            wall = [statistics.mean(r[i]["wall_s"] for r in runs) for i in range(n)]
            acc = [statistics.mean(r[i]["acc"] for r in runs) for i in range(n)]
            ax.plot(wall, acc, marker=".", label=e["strategy"])
        ax.axhline(data["meta"]["target_acc"], color="gray", linestyle=":", label="target")
        ax.set_xlabel("training wall time (s, validation excluded)")
        ax.set_ylabel("test accuracy (mean of seeds)")
        ax.set_title(f"digits CNN, 2 ranks, link {data['accuracy'][0]['bandwidth']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(img_dir / "benchmarks_accuracy.png", dpi=110)
        plt.close(fig)
        written.append(f"{IMG}/benchmarks_accuracy.png")
    return written
