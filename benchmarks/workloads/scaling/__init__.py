"""Phase ``scaling``: a latency-bandwidth model of every strategy's step time, fitted, validated, projected.

THE PROJECTION IS A MODEL, NOT A MEASUREMENT. What is measured here (2 CPU cores, emulated links):

1. **Links**: ``all_reduce`` of 8 fp32 buffers from 4 KB to 45 MB on each link (2 ranks), a few
   repetitions each; least squares on the ring model below gives each link's latency ``alpha`` and
   payload bandwidth ``beta`` (bytes/s).
2. **Compute**: the compute-only bound ``t(B) = a + b B`` (the throughput phase's calibration, or
   two compute-only runs of this phase when that is absent).
3. **4 ranks**: a small MLP (9.5 MB of fp32 parameters) on 4 ranks joined by an emulated switch
   (:func:`benchmarks.base.netns.emulated_cluster`), its own link sweep, then ``--scaling-repeats``
   rounds of every strategy interleaved (A B C, A B C, ...; compute-only in the same rounds) in one
   process per rank: data the fits never saw, compared by its median.

Model (per optimizer step, seconds; ``t_c`` compute-only step, ``M`` model bytes, ``N`` ranks,
``H`` ``sync_every``, ``d`` ``delay``)::

    T_ar(M, N)        = 2(N-1)/N * M / beta + 2(N-1) * alpha     ring all-reduce
    compute_only      = t_c
    ssgd, ddp         = t_c + kappa M + E_ddp                    E_ddp: DDP's buckets, below
    our others pay their own work w per step (below): t_c <- t_c + w in every line that follows
    odsgd             = t_c + kappa M + max(0, T_ar - t_c)       consumed one whole step after launch
    the periodic ones, with t_c' = t_c + kappa M / H:
    local_sgd, diloco,
    post_local_sgd    = t_c' + T_ar / H                          one blocking average per period
    dasgd             = t_c' + max(0, T_ar - d t_c') / H         the average overlaps d steps
    cocodsgd,
    overlap_local_sgd = t_c' + max(0, T_ar - H t_c') / H         the average overlaps the whole period
    streaming_diloco  = t_c' + P max(0, T_ar(M/P) - tau t_c') / H   P fragments, each overlapping tau steps

``E_ddp`` (:func:`ddp_exposed_s`) follows how DDP buckets the gradient: buckets of 1 MB (the first)
then 25 MB (``bucket_cap_mb``) filled in gradient-ready order (:func:`ddp_buckets`); backward is the
last 2/3 of ``t_c`` and makes gradient bytes at an even rate; buckets are all-reduced one after the
other from when they are ready; ``E_ddp`` is how far the last one ends after ``t_c``. Where the
phase measured it (:func:`ready_profile`: gradient hooks on one process, one thread), the
measured backward share and the time each gradient is made replace the 2/3 and the even rate. So the
last-launched bucket never overlaps backward and the others overlap what is left of it: a model of
one or two buckets (the 4-rank MLP) hides little, ResNet-18 (3 buckets) more. No overlap share is
fitted. ``kappa`` (host CPU time per byte all-reduced, lost to compute: gloo's threads share the
ranks' cores; 0 for the GPU projection) is the one fitted term, on the 2-rank ssgd/ddp cells
only; every other cell and the 4-rank run are predictions. On ``N`` ranks it is scaled by
:func:`contention`, not refitted: ``2(N-1)/N`` ring bytes per rank times ranks per core. An
algorithm's own work ``w`` (its copies, second update, merges) is not fitted either: the own-cost
phase measures it in isolation (:mod:`benchmarks.workloads.own_work`) as whole-model passes, and
:func:`own_work_s` turns passes into seconds for a model of ``M`` bytes at the measured pass rate
(0 where it was not measured, and for ``ssgd``/``ddp``, whose reduction is DDP's own; 0 for the GPU
projection, where a pass over even the 1B model's 4 GB takes milliseconds). ``sasgd`` and ``asgd``
are left out: they are not lock-step and their traffic goes through one parameter server in rank
0, whose link carries ``N`` workers' pushes and pulls, not a ring; a ring model says nothing about
them.

Run it after the throughput phase (it validates against ``data["throughput"]`` and reuses its
calibration). Alone: ``sudo .venv/bin/python -m benchmarks.projection [--base-json RESULTS.json]``.

from __future__ import annotations

Layout: :mod:`.model` (the equations), :mod:`.fit` (least squares), :mod:`.cells` (results ->
predicted vs measured), :mod:`.projection` (the GPU-scale projection), :mod:`.runner` (runner
side), :mod:`.worker` (rank side), :mod:`.report` (the page's section), :mod:`.cli` (alone).
"""

from __future__ import annotations

from benchmarks.base.phase import Phase
from benchmarks.workloads.scaling.report import section
from benchmarks.workloads.scaling.runner import add_args, estimate_s, measure

PHASE = Phase("scaling", add_args, measure, section, estimate_s, writes=("scaling", "img/benchmarks_projection.png"))
"""The phase as :mod:`benchmarks.run` runs it and the report renders it."""
