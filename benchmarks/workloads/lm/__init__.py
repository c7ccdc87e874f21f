"""Phase ``lm``: wall time to a target validation loss of a character-level transformer at 200 Mbit/s.

The workload is :mod:`benchmarks.base.charlm` (Python's standard library source, fixed split and
vocabulary): a decoder-only :class:`~benchmarks.base.charlm.CharTransformer` (d_model 192, 3 layers,
4 heads, context 128, ~1.4 M parameters), batch 16 windows per rank, AdamW (lr 3e-3) for every
strategy, which is also the inner optimizer of ``diloco`` and ``streaming_diloco``. At 200 Mbit/s
ssgd's all-reduce of the 5.6 MB gradient takes about as long as the compute step, so the link matters.

Each strategy runs in one pair of processes (start-up is ~10 s) that trains one model per seed in
turn. A run stops at ``--lm-max-steps`` or, checked at each validation, once its training wall
time passes ``--lm-max-wall`` (the decision is reduced over the ranks so all stop at the same
step). Every ``--lm-val-every`` steps each rank computes the loss on the fixed validation windows
of the model its strategy validates (ours: the consensus, the average over the ranks they form at
validation start; ddp: the common replica; post-local SGD: each rank's own model); the logged loss
is the mean over the ranks. The clock is paused while validating (consensus included), as in the
digits workload. The time to the target is the training wall time of the
first validation at or below it (a measured point, not an interpolation); a run that never gets
there is reported as "not reached" with its final loss.

Duration on a quiet 2-core machine: about 12-13 minutes for the default 8 strategies x 3 seeds
(8 start-ups of ~10 s; per seed ~20 s of training, up to one validation interval more, the
validations and their consensus averages, ~2 s of set-up). ``--lm-interleave`` runs seed 0 of
every strategy, then seed 1, ... in one process pair each, so that machine noise does not hit one
strategy only; its 16 extra start-ups add ~3 minutes.

Every strategy accepts AdamW. OD-SGD's local compensation step is plain SGD on the raw gradient
at the optimizer's learning rate (``local_lr=None``), so with AdamW's small learning rate the
local weights stay close to the global ones: it trains like AdamW on a one-step-stale mean gradient.

Standalone (root, emulated link)::

    .venv/bin/python -m benchmarks.lm                                   # all strategies, 3 seeds
    .venv/bin/python -m benchmarks.lm --lm-strategies ssgd,odsgd --lm-seeds 0 --out /tmp/lm/lm.json
"""

from __future__ import annotations

from benchmarks.base.phase import Phase
from benchmarks.workloads.lm.common import NAME
from benchmarks.workloads.lm.report import section
from benchmarks.workloads.lm.runner import add_args, estimate_s, measure

PHASE = Phase(NAME, add_args, measure, section, estimate_s, writes=(NAME, "img/benchmarks_lm.png"))
"""The phase as :mod:`benchmarks.run` runs it and the report renders it."""
