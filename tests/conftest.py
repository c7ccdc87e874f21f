"""Shared pytest configuration: GPU-marked tests skip where CUDA is absent (CI never has one)."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: run on a GPU machine (NCCL, CUDA streams)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
