"""Phase ``peer``: our ``diloco`` against torchft's ``DiLoCo`` under torchft's real ``Manager`` and lighthouse.

Both train the character-level LM of :mod:`benchmarks.base.charlm` on the same emulated link, from the
same initial weights, on the same per-rank batches, with the same inner optimizer (AdamW), outer
optimizer (SGD lr 0.7, momentum 0.9, Nesterov: our diloco's defaults) and ``sync_every``. The two
sides run the same plain loop (``zero_grad``, loss, backward, ``step``):

* **ours**: a Fabric loop with ``DelayedFabricStrategy("diloco")`` (gloo; DDP's gradient all-reduce
  replaced by the strategy's no-op hook, the synchronisation runs after the wrapped optimizer's step);
* **torchft**: ``torchft.local_sgd.DiLoCo`` around the same AdamW, driven by ``torchft.Manager``
  with a ``ProcessGroupGloo``; every rank is a replica group of one (its own ``TCPStore`` and
  ``ManagerServer``), the lighthouse (``torchft_lighthouse --min_replicas 2``) runs inside rank 0's
  network namespace, started before and stopped after every torchft run by :func:`lighthouse`.

Repeats are interleaved (ours, torchft, ours, torchft, ...), repeat ``r`` uses seed ``r`` on both
sides. Validation loss is measured after every synchronisation on a fixed set of windows, on both
ranks, with the clock stopped. Standalone::

    python -m benchmarks.peer --json peer.json              # 200mbit, 6 repeats, 64 steps
    python -m benchmarks.peer --peer-bandwidths 200mbit,unshaped --peer-repeats 3

The default (200mbit, 6 repeats, 64 steps: 12 runs) does about 0.3 s of CPU per step and rank; on
a quiet 2-core machine a run is about 28 s (start-up, 64 steps, 9 evaluations), the phase about 6
minutes. Six repeats, not three: the two implementations differ by a few per cent, about the spread
of three repeats on a shared machine (two full runs with three gave 1.04x and 0.99x).
"""

from __future__ import annotations

from benchmarks.base.phase import Phase
from benchmarks.workloads.peer.common import NAME
from benchmarks.workloads.peer.report import section
from benchmarks.workloads.peer.runner import add_args, estimate_s, measure

PHASE = Phase(NAME, add_args, measure, section, estimate_s, writes=(NAME, "img/benchmarks_peer.png"))
"""The phase as :mod:`benchmarks.run` runs it and the report renders it."""
