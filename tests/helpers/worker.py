"""Entry point of one rank started by :func:`tests.helpers.launch.run_ranks`."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import torch


def main() -> None:
    module, function, kwargs, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4])
    torch.set_num_threads(1)
    result = getattr(importlib.import_module(module), function)(**kwargs)
    torch.save(result, out / f"result{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main()
