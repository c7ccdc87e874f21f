"""The phase's section of the page: the model, the fitted parameters, the validation and the projection."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.workloads.scaling.cells import (
    cluster_cells,
    contention,
    error_summary,
    resnet18_param_bytes,
    throughput_source,
    validation_cells,
)
from benchmarks.workloads.scaling.model import ddp_buckets, profile_buckets
from benchmarks.workloads.scaling.projection import (
    PROJECTED,
    PROJECTION_LINKS,
    PROJECTION_MODELS,
    payload_efficiency,
    project,
)

if TYPE_CHECKING:
    pass


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.0f} %"


def _abs_pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f} %"


def _profiles_text(data: dict[str, Any]) -> str:
    prof = data.get("scaling", {}).get("profiles") or {}
    if not prof:
        return "(No gradient-ready profile in this run: backward = 2/3 of `t_c`, gradient bytes at an even rate.)"
    parts = []
    for name, label in (("resnet18", "ResNet-18"), ("mlp", "the MLP")):
        if name in prof:
            _, ready = profile_buckets(prof[name])
            shares = ", ".join(f"{r:.2f}" for r in ready)
            parts.append(f"{label}: backward {prof[name]['backward_share']:.2f} of the step, buckets ready at {shares}")
    return (
        "Measured here instead of assumed (gradient hooks, one process, one thread): when backward makes each "
        "gradient and backward's share of the step (" + "; ".join(parts) + " of backward)."
    )


def _own_work_text(data: dict[str, Any]) -> str:
    work = (data.get("own_cost") or {}).get("own_work") or {}
    if not work.get("cells"):
        return "This run did not measure the algorithms' own work (the own-cost phase), so it has no term here."
    passes = ", ".join(f"`{n}` {c['passes']:.1f}" for n, c in work["cells"].items() if n != "ssgd")
    return (
        "An algorithm's own work `w` is not fitted either: the own-cost phase measured it in isolation as "
        f"whole-model passes per step ({passes}; one pass over ResNet-18 = {1000 * work['pass_s']:.1f} ms on one "
        "thread), scaled to each model's bytes; `ssgd` and `ddp` reduce through DDP's own path and have none. "
        "The GPU projection sets it to 0, like kappa: a pass over even the 1B model's 4 GB is milliseconds there."
    )


def _mb(buckets: list[float] | None) -> str:
    if not buckets:
        return "(buckets unknown: DDP's defaults assumed)"
    return (
        f"{len(buckets)} bucket{'s' if len(buckets) > 1 else ''} ("
        + ", ".join(f"{b / 1e6:.1f}" for b in buckets)
        + " MB)"
    )


def analyse(data: dict[str, Any]) -> dict[str, Any]:
    """Everything the section shows, from the whole results dict (JSON-serialisable)."""
    two, kappa = validation_cells(data)
    four = cluster_cells(data, kappa)
    eff = payload_efficiency(data)
    sync_every = int(data.get("meta", {}).get("sync_every", 4))
    return {
        "source": throughput_source(data)["source"],
        "world_n": (c := data.get("scaling", {}).get("cluster") or {}).get("world", 4),
        "contention_n": contention(c.get("world", 4), c.get("cores")),
        "buckets_2": ddp_buckets(rb) if two and (rb := resnet18_param_bytes(data)) else None,
        "buckets_n": ddp_buckets(pb) if (pb := data.get("scaling", {}).get("cluster", {}).get("param_bytes")) else None,
        "kappa": kappa,
        "payload_efficiency": eff,
        "validation_2": two,
        "validation_n": four,
        "summary_2": error_summary([c for c in two if c["role"] == "compare"]),
        "summary_n": error_summary(four),
        "projection": project(eff, sync_every),
        "sync_every": sync_every,
    }


PLOT_GROUPS = (
    ("odsgd",),
    ("local_sgd", "post_local_sgd", "diloco"),
    ("dasgd",),
    ("cocodsgd", "overlap_local_sgd"),
    ("streaming_diloco",),
)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, links = list(PROJECTION_MODELS), list(PROJECTION_LINKS)
    fig, axes = plt.subplots(len(models), len(links), figsize=(11, 8), sharex=True, squeeze=False)
    for i, m in enumerate(models):
        for j, lk in enumerate(links):
            ax = axes[i][j]
            sel = [r for r in rows if r["model"] == m and r["link"] == lk]
            for group, style in zip(PLOT_GROUPS, ("-o", "-s", "--^", "-D", "-.v"), strict=True):
                ys = [r[group[0]] for r in sel]  # the group's members share one rule, hence one curve
                ax.plot([r["n"] for r in sel], ys, style, ms=3, label=" = ".join(group))
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{m}, {lk}", fontsize=10)
            ax.set_ylabel("speed-up over ssgd")
            if i == len(models) - 1:
                ax.set_xlabel("ranks N")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("PROJECTION (latency-bandwidth model, not a measurement): step-time speed-up over ssgd", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(data: dict[str, Any], img_dir: Path) -> str:
    """Markdown of the scaling phase: model, fitted parameters, validation, projection table and plot."""
    a = analyse(data)
    res = data.get("scaling", {})
    lines = ["## Scaling: a latency-bandwidth model, its validation, and a PROJECTION to 8-1024 ranks", ""]
    lines += [
        "Everything under *Projection* below is computed from a model, **not measured**. The model is fitted "
        "and checked on this machine's 2-rank links and a 4-rank emulated cluster.",
        "",
        "### Model",
        "",
        "Per optimizer step; `t_c` compute-only step, `M` model bytes (fp32), `N` ranks, `H` = `sync_every` "
        f"(= {a['sync_every']}), `d` = `delay` (1), `P` fragments (2), `tau` fragment delay (1):",
        "",
        "```",
        "T_ar(M, N)        = 2(N-1)/N * M / beta + 2(N-1) * alpha          ring all-reduce",
        "compute_only      = t_c",
        "ssgd, ddp         = t_c + kappaM + E_ddp                   E_ddp: what backward cannot hide of DDP's buckets",
        "   our others first add their own work w per step: t_c <- t_c + w",
        "odsgd             = t_c + kappaM + max(0, T_ar - t_c)          the mean is consumed one step after launch",
        "   the periodic ones, with t_c' = t_c + kappaM/H:",
        "local_sgd, diloco,",
        "post_local_sgd    = t_c' + T_ar / H                        one blocking average per period",
        "dasgd             = t_c' + max(0, T_ar - d*t_c') / H       the average overlaps d steps",
        "cocodsgd,",
        "overlap_local_sgd = t_c' + max(0, T_ar - H*t_c') / H       the average overlaps the whole period",
        "streaming_diloco  = t_c' + P * max(0, T_ar(M/P) - tau*t_c') / H",
        "```",
        "",
        "`E_ddp` follows how DDP buckets the gradient, with nothing fitted: buckets of 1 MB (the first) then 25 MB "
        "(`bucket_cap_mb`), filled with gradients in the order backward makes them; backward is the last 2/3 of "
        "`t_c` and makes gradient bytes at an even rate; the buckets are all-reduced one after the other, each "
        "from when it is ready; `E_ddp` = how far the last one ends after `t_c`. "
        f"{_profiles_text(data)} The last-launched bucket never "
        f"overlaps backward, the others overlap what is left of it: ResNet-18 makes {_mb(a['buckets_2'])}, the "
        f"4-rank MLP {_mb(a['buckets_n'])}. "
        f"`kappa` = **{a['kappa'] * 1e9:.2f} ms/MB** (host CPU time per byte all-reduced that compute loses: gloo's "
        "threads share the ranks' 2 cores) is the one fitted term, fitted (median relative error) on the 2-rank "
        "`ssgd`/`ddp` cells only; every other cell, and the 4-rank run, is a prediction. On N ranks kappa is "
        "scaled, not refitted: x 2(N-1)/N (the bytes a rank's ring all-reduce handles) x ranks per core "
        f"(x {a['contention_n']:.1f} on the {a['world_n']}-rank cluster). {_own_work_text(data)} `sasgd`/`asgd` are "
        "not modelled: they are not lock-step, and their traffic goes through one parameter server in rank 0 "
        "(N pushes and pulls on one link), which a ring model does not describe.",
        "",
        "### Fitted link parameters",
        "",
        "All-reduce of 8 fp32 buffers, 4 KB to 45 MB, least squares on `T = 2(N-1)alpha + 2(N-1)/N * bytes/beta`:",
        "",
        "| link | ranks | latency alpha | payload beta | beta / nominal rate | fit's median error |",
        "|---|---|---|---|---|---|",
    ]
    fitted = [(lk, 2) for lk in res.get("links", [])]
    if res.get("cluster", {}).get("fit"):
        fitted.append((res["cluster"], res["cluster"]["world"]))
    for lk, n in fitted:
        f = lk.get("fit")
        if not f:
            lines.append(f"| {lk['bandwidth']} | {n} | failed | | | |")
            continue
        ratio = f"{f['bytes_per_s'] * 8 / lk['bps']:.2f}" if lk.get("bps") else "-"
        lines.append(
            f"| {lk['bandwidth']} | {n} | {f['latency_s'] * 1e6:.0f} µs | {f['bytes_per_s'] / 1e6:.1f} MB/s | "
            f"{ratio} | {_abs_pct(f['median_rel_error'])} |"
        )
    if not fitted:
        lines.append(
            "| (no sweep in this run: each link's one ResNet-18 all-reduce gives beta, with alpha = 0) | | | | | |"
        )
    cal = data.get("calibration") or res.get("calibration")
    if cal:
        lines += ["", f"Compute: `t(B) = {cal['a']:.3f} s + {cal['b'] * 1e3:.2f} ms * B` (ResNet-18, 2 ranks); "
                  "each cell uses the compute-only cell at its own batch when there is one."]  # fmt: skip
    lines += [
        "",
        "### Validation: predicted vs measured step time",
        "",
        "Error = predicted / measured - 1 (measured: the slowest rank's mean step, median over the repeats). "
        "Cells beyond 15 % are marked ⚠. On 2 cores the throughput cells carry the noise the throughput "
        "section describes.",
        "",
    ]
    for title, cells, summ in (
        (
            f"2 ranks, ResNet-18 (throughput cells of {a['source'] or 'no run'}: median of each cell's interleaved "
            "repeats, as that phase reports it, min-max beside)",
            a["validation_2"],
            a["summary_2"],
        ),
        (
            f"{res.get('cluster', {}).get('world', 4)} ranks, {res.get('cluster', {}).get('model', 'small MLP')} "
            f"(out of sample; median of {res.get('cluster', {}).get('repeats', 1)} interleaved repeats, min-max "
            "beside)",
            a["validation_n"],
            a["summary_n"],
        ),
    ):
        lines += [f"**{title}**: "]
        if not cells:
            lines += ["not measured in this run.", ""]
            continue
        lines[-1] += (
            f"median |error| **{_abs_pct(summ['median_abs_error'])}**, max **{_abs_pct(summ['max_abs_error'])}**, "
            f"{summ['within_15pct']} of {summ['cells']} cells within the 15 % target."
        )
        lines += ["", "| link | batch | strategy | measured | predicted | error |", "|---|---|---|---|---|---|"]
        for c in cells:
            if c["role"] != "compare":
                continue
            flag = "" if abs(c["error"]) <= 0.15 else " ⚠"
            spread = f" ({c['min_s']:.3f}-{c['max_s']:.3f})" if "min_s" in c else ""
            lines.append(
                f"| {c['bandwidth']} | {c['batch_size']} | {c['strategy']} | {c['measured_s']:.3f} s{spread} | "
                f"{c['predicted_s']:.3f} s | {_pct(c['error'])}{flag} |"
            )
        lines.append("")
    img_dir.mkdir(parents=True, exist_ok=True)
    plot(a["projection"], img_dir / "benchmarks_projection.png")
    lines += [
        "### PROJECTION: speed-up over `ssgd` at scale (model output, not a measurement)",
        "",
        "Assumptions (none measured here):",
        "",
    ]
    for name, m in PROJECTION_MODELS.items():
        lines.append(f"- **{name}** ({m['bytes'] / 1e6:,.0f} MB): `t_c` = {m['t_c']:.2f} s per step: {m['why']}.")
    for name, lk in PROJECTION_LINKS.items():
        lines.append(f"- **{name}** between nodes, alpha = {lk['latency_s'] * 1e6:.0f} µs per hop ({lk['why']}).")
    lines += [
        f"- beta = nominal rate x {a['payload_efficiency']:.2f} (the payload efficiency fitted on the shaped links "
        "above); one ring over all N ranks, each with its own link of that rate (the inter-node link is the "
        "bottleneck: intra-node NVLink and hierarchical all-reduce are not modelled); "
        "for ssgd, DDP's default buckets (1 MB, then 25 MB each; backward = 2/3 of `t_c`, gradient bytes at an "
        "even rate), each a ring all-reduce paying its own `2(N-1)` latency hops: the 1B model's 154 buckets at "
        "N = 1024 pay about 1.6 s of latency at 100 Gbit/s, more than its whole-model `T_ar` in the table "
        "(NCCL's tree all-reduce, not modelled, would cut that); `kappa` = 0 (NCCL moves the bytes without the "
        "host CPU); "
        f"`H` = {a['sync_every']} as in the measured runs. Speed-up = ssgd "
        "step / strategy step at the same batch: time per sample, not time to a target loss (the periodic "
        "methods may need more steps).",
        "",
        "![PROJECTION: speed-up over ssgd](img/benchmarks_projection.png)",
        "",
        "| model | link | N | ssgd step (T_ar) | " + " | ".join(PROJECTED) + " |",
        "|---|---|---|---|" + "---|" * len(PROJECTED),
    ]
    for r in a["projection"]:
        cells = " | ".join(f"{r[s]:.2f}x" for s in PROJECTED)
        lines.append(
            f"| {r['model']} | {r['link']} | {r['n']} | {r['ssgd_step_s']:.2f} s ({r['t_ar_s']:.2f} s) | {cells} |"
        )
    lines.append("")
    return "\n".join(lines)
