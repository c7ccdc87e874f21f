"""Lightning callbacks that average or copy the module's weights, and which strategies can honour them.

Lightning's weight-averaging callbacks (``StochasticWeightAveraging``, ``WeightAveraging`` and its
``EMAWeightAveraging``) read the weights *the module holds on this rank*, at epoch starts or after
every step, and copy their average back into the module at the end of ``fit``. The decision, per
rule (docs/index.md, "Callbacks that average weights"):

* ``ssgd``: every rank holds the same weights after every step (the mean gradient is the same on
  every rank), so the callbacks work as under DDP and the ranks end ``fit`` equal.
* every other rule: between synchronisations the module holds the rank's *own* weights (the local
  models of the averaging family, DiLoCo's inner ``x`` while the consensus is ``theta``, OD-SGD's
  ``w = W - lr g`` while the consensus is ``W``, an asynchronous worker's copy of the server's
  ``theta``), so the callback would average rank-local weights: the ranks end with different
  models (``diloco`` when the last step ends a round), or the rule's end of ``fit`` overwrites the
  average without a word (``odsgd`` sets ``w <- W``, ``sasgd``/``asgd`` take the server's
  ``theta``). These callbacks are refused at set-up, on every rank, with the reason and the fix.
* ``LearningRateFinder`` runs trial steps of the rule (communication, step counters, outer
  optimizer and error-feedback state) and then restores only what a Lightning checkpoint holds of
  the module: refused under every rule but ``ssgd``, for the same reason. ``BatchSizeFinder`` is
  refused by Lightning itself under every distributed strategy.
* ``ModelCheckpoint(save_weights_only=True)`` needs nothing: every checkpoint's ``state_dict`` is
  taken inside :meth:`~lightning_delayed.core.base.DelayedAlgorithm.consensus`, weights-only or not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning.pytorch.callbacks import LearningRateFinder, StochasticWeightAveraging, WeightAveraging

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_delayed.strategies.base import DelayedStrategy

WEIGHT_AVERAGING_CALLBACKS = (StochasticWeightAveraging, WeightAveraging)
"""Callbacks that average the module's per-rank weights (``EMAWeightAveraging`` is a ``WeightAveraging``)."""


def refuse_weight_averaging(strategy: DelayedStrategy, trainer: pl.Trainer) -> None:
    """Raise a ``ValueError`` naming the first callback of ``trainer`` that ``strategy`` cannot honour.

    Nothing is refused when the module holds the consensus after every step
    (``strategy.module_holds_consensus``: ``ssgd``). Run inside the strategy's set-up checks, so
    the refusal reaches every rank (:func:`~lightning_delayed.strategies.checks.refuse_on_every_rank`).
    """
    if strategy.module_holds_consensus:
        return
    owner, name = type(strategy).__name__, strategy.strategy_name
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        kind = type(callback).__name__
        if isinstance(callback, WEIGHT_AVERAGING_CALLBACKS):
            raise ValueError(
                f"{owner} does not support the {kind} callback: it averages the weights the module holds "
                f"on each rank, and under {name!r} those are the rank's own between synchronisations, not "
                "the consensus, so the ranks would end fit with different weights (or the end of fit would "
                f"overwrite the average). Remove {kind} from the callbacks, or train with strategy='ssgd', "
                "where every rank holds the same weights after every step "
                "(docs/index.md, 'Callbacks that average weights')."
            )
        if isinstance(callback, LearningRateFinder):
            raise ValueError(
                f"{owner} does not support the {kind} callback: its trial steps would run the {name!r} rule "
                "(communication, step counter, optimizer and error-feedback state) and Lightning restores "
                "only the module and optimizer afterwards. Find the learning rate first with "
                "strategy='ssgd' (Tuner(trainer).lr_find) and pass it to the model "
                "(docs/index.md, 'Callbacks that average weights')."
            )
