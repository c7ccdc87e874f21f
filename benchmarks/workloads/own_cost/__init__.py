"""Phase ``own_cost``: each strategy's own cost, with communication made free.

Every strategy that takes a ``comm_hook`` runs with :class:`FreeHook`, a :class:`CommHook` that
completes at once with this rank's own values: no collective, no wire, no gloo thread. What is left
above the compute-only bound (:class:`benchmarks.base.baselines.ComputeOnlyStrategy`: the same model,
DDP wrapper and ranks, no communication at all) is the algorithm's own work: its copies, its second
update, the hook's copy, its Python::

    own cost = step(strategy, free comm) / step(compute_only) - 1        (target: <= 5 %)

ResNet-18 (torchvision, 10 classes), random CIFAR-shaped batches of 32, SGD lr 0.01 momentum 0.9,
one thread per rank, 2 ranks on the unshaped link. One process pair runs every cell: each round fits
``compute_only`` between every two strategies (C A C B C ... C), each fit with its own warm-up
before its timed steps, so start-up is paid once and each strategy is compared with the bound fits
just before and after it (their mean): a slow drift of the machine over a round cancels. A fit's
step time is the median over its windows of H = ``sync_every`` steps of the window's mean step
(24 timed steps: 6 windows): a periodic rule pays its synchronisation once per window, and a burst
of other load on the shared machine spoils one window, not the figure. A cell's figure is the median
over the rounds, with min and max.

The same phase times every rule's own work in isolation (:mod:`benchmarks.workloads.own_work`: the update
rule alone, no forward or backward, in ms and whole-model passes), which says *why* a cell costs
what it does.

Not measured here: ``sasgd`` and ``asgd`` take no ``comm_hook`` (their RPC parameter server is the
communication; nothing can make it free without removing the algorithm), and ``ssgd`` without a
hook runs DDP's own C++ all-reduce, which with communication free *is* the compute-only bound;
``ssgd`` here is its custom-hook path (:class:`~lightning_delayed.comm.hooks.DDPGradientHook`).

Every strategy runs with ``broadcast_buffers=False``, as the bound does: ``ssgd`` and ``odsgd``
would otherwise broadcast the BatchNorm buffers in every forward.

Each cell also records the CPU seconds per step of the main thread, gloo's threads and the rest
(:mod:`benchmarks.base.cputime`); the main thread's excess over ``compute_only`` is the algorithm's.

Standalone::

    python -m benchmarks.own_cost                       # default grid, prints and writes the JSON
    python -m benchmarks.own_cost --own-cost-steps 8 --own-cost-repeats 1 --own-cost-strategies odsgd
"""

from __future__ import annotations

from benchmarks.base.phase import Phase
from benchmarks.workloads.own_cost.common import NAME
from benchmarks.workloads.own_cost.report import section
from benchmarks.workloads.own_cost.runner import add_args, estimate_s, measure

PHASE = Phase(NAME, add_args, measure, section, estimate_s, writes=(NAME,))
"""The phase as :mod:`benchmarks.run` runs it and the report renders it."""
