"""Entry point of one rank started by :func:`tests.helpers.launch.run_ranks`."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    module, function, kwargs, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4])
    torch.set_num_threads(1)
    result = getattr(importlib.import_module(module), function)(**kwargs)
    torch.save(result, out / f"result{os.environ['RANK']}.pt")
    if dist.is_initialized():
        # Tear the group down while every rank is alive: left to interpreter exit, gloo's
        # threads occasionally abort the process ("terminate called without an active exception")
        # after all work is done, which would turn a finished rank into a failed one.
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
