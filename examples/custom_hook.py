"""A communication hook of your own: count what every average sends, around any other hook.

Hooks are classes with typed ``__init__`` arguments, so LightningCLI builds them from YAML and
hands them to any strategy through its ``comm_hook`` argument
(``examples/configs/odsgd_custom_hook.yaml``)::

    trainer:
      strategy:
        class_path: lightning_delayed.ODSGDStrategy
        init_args:
          compression: fp16              # wraps the hook below: it sees the fp16 wire tensors
          comm_hook:
            class_path: custom_hook.CountingHook
            init_args:
              inner: {class_path: lightning_delayed.AllReduceHook, init_args: {bucket_cap_mb: 4.0}}

In Python: ``ODSGDStrategy(comm_hook=CountingHook(AllReduceHook(bucket_cap_mb=4.0)))``.
Tutorial: docs/extending.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from lightning_delayed import AllReduceHook, CommHook
from lightning_delayed.comm.buckets import Pending


class CountingHook(CommHook):
    """Passes every average to ``inner`` and counts launches and payload bytes, per ``what`` and dtype.

    Args:
        inner: the hook that really communicates (default: :class:`~lightning_delayed.AllReduceHook`).
    """

    def __init__(self, inner: CommHook | None = None) -> None:
        self.inner = inner if inner is not None else AllReduceHook()
        self.launches: Counter[str] = Counter()  # per what ("gradients", "parameters")
        self.bytes_sent: Counter[str] = Counter()  # per dtype ("torch.float16", ...)

    def launch(
        self,
        tensors: Sequence[Tensor],
        *,
        weight: float | None = None,
        keys: Sequence[str] | None = None,
        what: str = "tensors",
    ) -> Pending:
        self.launches[what] += 1
        for t in tensors:
            self.bytes_sent[str(t.dtype)] += t.numel() * t.element_size()
        return self.inner.launch(tensors, weight=weight, keys=keys, what=what)

    def set_group(self, group: Any) -> None:
        super().set_group(group)
        self.inner.set_group(group)  # a wrapping hook passes the strategy's process group on

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict()}  # the counters are statistics, not training state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))
