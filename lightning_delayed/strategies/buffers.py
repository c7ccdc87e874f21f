"""DDP's buffer broadcast off for the model-averaging family, through torch's current argument.

Buffers take part in the model averages and evolve locally in between (docs/algorithms/index.md),
so DDP must not overwrite them with rank 0's at every forward. torch 2.13 renamed DDP's
``broadcast_buffers`` to ``forward_sync_buffers`` and warns once per rank ("`broadcast_buffers` is
deprecated") when the old name is passed. The new argument still broadcasts rank 0's buffers once
when DDP wraps the module, as it does the parameters, so every rank starts from the same model.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch.nn.parallel import DistributedDataParallel

_NEW, _OLD = "forward_sync_buffers", "broadcast_buffers"


def keep_buffers_local(ddp_kwargs: dict[str, Any]) -> None:
    """Turn DDP's per-forward buffer broadcast off in ``ddp_kwargs`` unless the user chose either argument."""
    if _NEW in ddp_kwargs or _OLD in ddp_kwargs:
        return
    accepted = inspect.signature(DistributedDataParallel.__init__).parameters
    ddp_kwargs[_NEW if _NEW in accepted else _OLD] = False
