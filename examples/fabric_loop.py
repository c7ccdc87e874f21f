"""A complete Fabric training loop with a ``lightning_delayed`` strategy, on the scikit-learn digits.

Run on 2 CPU processes (Fabric launches the second one itself)::

    python examples/fabric_loop.py --strategy odsgd
    python examples/fabric_loop.py --strategy diloco --sync-every 10 --checkpoint /tmp/digits.ckpt

The loop is an ordinary Fabric loop: ``fabric.backward(loss)`` and ``optimizer.step()``; the
algorithm runs around the wrapped optimizer's step. Fabric has no validation loop and no end of
fit, so the loop says when to evaluate on the consensus model (``consensus(fabric)``) and when
training ends (``finish(fabric)``). See ``docs/fabric.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from digits import DigitsCNN, DigitsDataModule  # examples/digits.py (the script's directory is on sys.path)
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import DataLoader

import lightning_delayed.fabric  # `import lightning_delayed` registers the names in Fabric's registry
from lightning_delayed.fabric import consensus, finish

# The algorithm argument each strategy takes for "average every N steps" (odsgd/ssgd have none).
SYNC_EVERY = {"local_sgd", "dasgd", "cocodsgd", "overlap_local_sgd", "diloco", "streaming_diloco"}


def evaluate(fabric: Fabric, model: nn.Module, loader: DataLoader[Any]) -> tuple[float, float]:
    """Loss and accuracy over the whole test set (every rank's shard summed), on the model as it is now."""
    model.eval()
    totals = torch.zeros(3)
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            totals += torch.tensor(
                [nn.functional.cross_entropy(logits, y, reduction="sum").item(), (logits.argmax(1) == y).sum(), len(y)]
            )
    model.train()
    loss, correct, n = fabric.all_reduce(totals, reduce_op="sum").tolist()
    return loss / n, correct / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategy", default="odsgd", help="a lightning_delayed name: odsgd, dasgd, diloco, ...")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sync-every", type=int, default=None, help="steps between averages (averaging family)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--checkpoint", type=Path, default=None, help="save the run here at the end")
    args = parser.parse_args()

    strategy: Any = args.strategy
    if args.sync_every is not None:
        if args.strategy not in SYNC_EVERY:
            parser.error(f"--sync-every does not apply to {args.strategy!r}")
        strategy = lightning_delayed.fabric.DelayedFabricStrategy(args.strategy, sync_every=args.sync_every)
    fabric = Fabric(accelerator="cpu", devices=args.devices, strategy=strategy)
    fabric.launch()
    fabric.seed_everything(0)  # the same initial model on every rank

    data = DigitsDataModule(batch_size=32)
    data.setup()
    train_loader, test_loader = fabric.setup_dataloaders(data.train_dataloader(), data.test_dataloader())
    model = DigitsCNN().net  # a plain torch module: Fabric needs no LightningModule
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)

    for epoch in range(args.epochs):
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            fabric.backward(loss)
            optimizer.step()  # the algorithm's rule runs around this step
        # Evaluate the model the ranks agree on; the local trajectory is restored afterwards.
        with consensus(fabric):
            test_loss, test_acc = evaluate(fabric, model, test_loader)
        fabric.print(
            f"epoch {epoch}: train loss {loss.item():.4f}  consensus test loss {test_loss:.4f} acc {test_acc:.4f}"
        )

    finish(fabric)  # wait for what is in flight, apply it, final average: one model on every rank
    test_loss, test_acc = evaluate(fabric, model, test_loader)
    fabric.print(f"final ({args.strategy}, {fabric.world_size} ranks): test loss {test_loss:.4f} acc {test_acc:.4f}")
    if args.checkpoint is not None:
        fabric.save(args.checkpoint, {"model": model, "optimizer": optimizer, "epoch": args.epochs})
        fabric.print(f"saved {args.checkpoint}")


if __name__ == "__main__":
    main()
