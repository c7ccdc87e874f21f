"""LightningCLI entry point: choose any ``lightning_delayed`` strategy from the command line or YAML.

    python examples/cli.py fit --config examples/configs/odsgd.yaml
    python examples/cli.py fit --config examples/configs/odsgd_class_path.yaml --print_config
    python examples/cli.py fit --config examples/configs/ssgd.yaml --trainer.strategy=odsgd

``import lightning_delayed`` registers the strategy names (``trainer.strategy: odsgd``); the
classes also work by ``class_path: lightning_delayed.ODSGDStrategy`` with typed ``init_args``.
The data are the scikit-learn digits bundled with the package (no download).
"""

from __future__ import annotations

import torch.distributed as dist
from digits import DigitsCNN, DigitsDataModule

import lightning_delayed  # noqa: F401  (registers "odsgd", "ssgd", ... with Lightning)
from lightning_delayed.cli import DelayedLightningCLI


def main() -> None:
    # Re-running with the same default_root_dir replaces the saved config.yaml instead of aborting.
    # DelayedLightningCLI: every bad strategy argument, one line each, comes first (see lightning_delayed/cli.py).
    DelayedLightningCLI(DigitsCNN, DigitsDataModule, save_config_kwargs={"overwrite": True})
    # Tear the gloo group down while every rank is alive: left to interpreter exit, its threads are
    # sometimes destroyed while joinable and the process aborts (exit -6) after the work is done.
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
