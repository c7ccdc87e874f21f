"""Real data that ships with scikit-learn: the 8x8 handwritten digits, and a small CNN for them.

``sklearn.datasets.load_digits`` holds 1,797 images inside the scikit-learn package, so the examples
and tests run without any download. :class:`DigitsDataModule` makes a fixed, seeded split and
:class:`DigitsCNN` is a small convolutional classifier; both take typed arguments so that
LightningCLI can configure them (see ``examples/cli.py``).
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
import torchmetrics
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

DATA_DESCRIPTION = "scikit-learn digits, bundled (sklearn.datasets.load_digits, 1,797 8x8 images)"
NUM_CLASSES = 10


class DigitsDataModule(pl.LightningDataModule):
    """The scikit-learn digits, split once into train and test sets with a fixed seed.

    Pixels (0..16 in the source) are scaled to [0, 1]; images have shape ``(N, 1, 8, 8)``, float32.
    The test set doubles as the validation set. Plain DataLoaders are returned: under a
    distributed strategy Lightning gives the training loader a shuffling ``DistributedSampler``.

    Args:
        batch_size: samples per batch on each rank.
        num_test: size of the held-out test set (the rest, 1,797 - ``num_test``, is for training).
        seed: seed of the train/test permutation.
    """

    def __init__(self, batch_size: int = 32, num_test: int = 500, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.num_test = num_test
        self.seed = seed
        self.train_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        digits = load_digits()
        images = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
        labels = torch.from_numpy(digits.target.astype(np.int64))
        n = len(labels)
        if not 0 < self.num_test < n:
            raise ValueError(f"num_test must be between 1 and {n - 1}, got {self.num_test!r}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        test_idx, train_idx = order[: self.num_test], order[self.num_test :]
        self.train_set = TensorDataset(images[train_idx], labels[train_idx])
        self.test_set = TensorDataset(images[test_idx], labels[test_idx])

    def train_dataloader(self) -> DataLoader[tuple[Tensor, ...]]:
        assert self.train_set is not None, "setup() was not called"
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=0)

    def val_dataloader(self) -> DataLoader[tuple[Tensor, ...]]:
        return self.test_dataloader()

    def test_dataloader(self) -> DataLoader[tuple[Tensor, ...]]:
        assert self.test_set is not None, "setup() was not called"
        return DataLoader(self.test_set, batch_size=self.batch_size, shuffle=False, num_workers=0)


class DigitsCNN(pl.LightningModule):
    """A small CNN for 8x8 digits: two 3x3 convolutions, a max-pool and two linear layers.

    Args:
        lr: learning rate of SGD.
        momentum: momentum of SGD.
    """

    def __init__(self, lr: float = 0.05, momentum: float = 0.9) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.momentum = momentum
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, NUM_CLASSES),
        )
        self.loss_fn = nn.CrossEntropyLoss()
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=NUM_CLASSES)
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", self.loss_fn(logits, y), sync_dist=True)
        self.log("val_acc", self.val_acc, sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test_acc", self.test_acc, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)
