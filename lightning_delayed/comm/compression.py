r"""Wire compression: fp16 / bf16 casts with error feedback, for whatever an algorithm communicates.

Two layers:

* :class:`Compressor`: the arithmetic, usable outside collectives (for example by a parameter
  server). ``compress(t, key)`` returns the wire tensor, ``decompress(wire, dtype)`` casts back.
  With error feedback each key keeps the residual of its last compression and adds it to the next
  tensor sent under that key:

  .. math::

      c_k = \mathrm{cast}_{wire}(t_k + e_k), \qquad e_{k+1} = t_k + e_k - \mathrm{cast}_{t}(c_k),
      \qquad e_0 = 0

  so what a rank sends over ``K`` rounds adds up to what it meant to send, up to the last residual
  (error feedback, Seide et al. 2014; Karimireddy et al., "Error Feedback Fixes SignSGD", ICML 2019).
  The arithmetic runs in the tensor's own dtype (float32 or float64).

* :class:`CompressedHook`: a :class:`~lightning_delayed.comm.communicator.CommHook` wrapper.
  Each rank sends :math:`c_i = \mathrm{cast}(t_i + e_i)` through the inner hook, which averages
  the wire tensors *in the wire dtype* (the default all-reduce sums them in fp16/bf16 and divides
  by the world size there); ``wait()`` casts the average back to each tensor's dtype. With
  two ranks and the default hook the result is exactly ``((c_0 + c_1) / 2).to(dtype)`` computed
  in the wire dtype, the same on every rank.

Choices:

* The sum is not pre-divided by the world size (DDP's ``fp16_compress_hook`` divides first):
  dividing first pushes small gradients into fp16's subnormal range (below 6.1e-5), where they
  lose bits. The price: with ``fp16`` the sum over all ranks must stay within +-65504; a sum that
  overflows becomes Inf and ``check_finite`` reports it. ``bf16`` has float32's range.
* One-off averages (``keys=None``: validation consensus, the final average of the averaging
  family) are sent at full precision: their rounding error could never be fed back, and the
  final model and the validated model stay exact means.
* Tensors that are not floating point, or whose dtype is no wider than the wire dtype (a bf16
  model with ``fp16`` compression), are sent unchanged: casting them would not save bytes.
* Weighted averages (``cocodsgd``/``dasgd`` with ``weighting="samples"``): the rank sends
  :math:`\mathrm{cast}(w_i t_i + e_i)` and its weight :math:`w_i` at full precision; the result is
  the wire mean divided by the mean weight. Under ``fp16`` the products must fit its range.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_delayed.comm.communicator import AllReduceHook, CommHook

if TYPE_CHECKING:
    from collections.abc import Sequence

    from lightning_delayed.comm.buckets import Pending

Compression = Literal["none", "fp16", "bf16", "int8", "int4"]
"""The values of the strategies' ``compression`` argument (``int8``/``int4``: :mod:`~lightning_delayed.comm.lowbit`)."""

COMPRESSIONS: tuple[str, ...] = get_args(Compression)
WIRE_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}


def check_compression(value: object, allow_none: bool = True) -> str:
    """Return ``value`` if it is an allowed compression name, else raise a ``ValueError`` naming it.

    ``allow_none=False`` allows only the casts of :class:`Compressor` (``"fp16"``, ``"bf16"``).
    """
    allowed = COMPRESSIONS if allow_none else tuple(WIRE_DTYPES)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"compression must be one of {allowed}, got {value!r}")
    return value


def check_block_size(value: object) -> int:
    """Return ``value`` if it is a valid ``block_size`` (an int >= 1), else raise a ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"block_size must be an int >= 1 (elements per int8/int4 scale block), got {value!r}: "
            "pass e.g. block_size=64 (the default)"
        )
    return value


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


class Compressor:
    """fp16/bf16 cast with per-key error feedback (see the module docstring).

    Args:
        compression: ``"fp16"`` or ``"bf16"``, the wire dtype.
        error_feedback: keep each key's residual and add it to the next tensor sent under that key.

    Attributes:
        wire_dtype: ``torch.float16`` or ``torch.bfloat16``.
        residuals: ``e`` per key (on the device and in the dtype of the last tensor compressed).
    """

    def __init__(self, compression: Literal["fp16", "bf16"] = "fp16", error_feedback: bool = True) -> None:
        self.compression = check_compression(compression, allow_none=False)
        self.error_feedback = _check_bool("error_feedback", error_feedback)
        self.wire_dtype = WIRE_DTYPES[self.compression]
        self.residuals: dict[str, Tensor] = {}

    def compresses(self, tensor: Tensor) -> bool:
        """Whether :meth:`compress` casts ``tensor`` (floating point and wider than the wire dtype)."""
        return tensor.is_floating_point() and tensor.element_size() > self.wire_dtype.itemsize

    def compress(self, tensor: Tensor, key: str | None = None) -> Tensor:
        """The wire tensor for ``tensor`` (a new tensor); updates the residual of ``key``.

        ``key=None`` (or ``error_feedback=False``) casts without feedback. A tensor that
        :meth:`compresses` refuses is returned as a copy, unchanged, and leaves no residual.
        """
        with torch.no_grad():
            t = tensor.detach()
            if not self.compresses(t):
                return t.clone()
            if key is None or not self.error_feedback:
                return t.to(self.wire_dtype)
            residual = self.residuals.get(key)
            if residual is not None:
                if residual.shape != t.shape:
                    raise RuntimeError(
                        f"error-feedback key {key!r} was used for a tensor of shape {tuple(residual.shape)} and now "
                        f"for one of shape {tuple(t.shape)}: every key must always name the same tensor"
                    )
                corrected = t + residual.to(device=t.device, dtype=t.dtype)
            else:
                corrected = t
            wire = corrected.to(self.wire_dtype)
            self.residuals[key] = corrected - wire.to(t.dtype)
            return wire

    def decompress(self, wire: Tensor, dtype: torch.dtype) -> Tensor:
        """``wire`` cast back to ``dtype`` (the same tensor if it already has that dtype)."""
        return wire.to(dtype)

    def reset(self) -> None:
        """Forget every residual."""
        self.residuals.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"residuals": {k: v.detach().clone() for k, v in self.residuals.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.residuals = {k: v.detach().clone() for k, v in state.get("residuals", {}).items()}


class _DecompressedPending:
    """The inner hook's average of the wire tensors, cast back (and divided by the mean weight)."""

    def __init__(self, inner: Pending, dtypes: list[torch.dtype], weighted: bool) -> None:
        self._inner, self._dtypes, self._weighted = inner, dtypes, weighted
        self._result: list[Tensor] | None = None

    def wait(self) -> list[Tensor]:
        if self._result is None:
            averaged = self._inner.wait()
            if self._weighted:
                *averaged, mean_weight = averaged
            result = [a.to(dtype) for a, dtype in zip(averaged, self._dtypes, strict=True)]
            if self._weighted:
                result = [r / mean_weight.to(r.dtype) for r in result]
            self._result = result
        return self._result


class CompressedHook(CommHook):
    """Wraps a hook: sends fp16/bf16 wire tensors with error feedback, returns full-dtype averages.

    Every strategy builds one from its ``compression`` argument around its hook; you can also give
    it explicitly (``comm_hook=CompressedHook(MyHook(), "bf16")``, or from YAML by ``class_path``).

    Args:
        inner: the hook that averages the wire tensors (default: :class:`AllReduceHook`).
        compression: ``"fp16"`` or ``"bf16"``.
        error_feedback: per-key residuals (see :class:`Compressor`); stored in checkpoints.
    """

    def __init__(
        self,
        inner: CommHook | None = None,
        compression: Literal["fp16", "bf16"] = "fp16",
        error_feedback: bool = True,
    ) -> None:
        if inner is not None and not isinstance(inner, CommHook):
            raise TypeError(f"inner must be a lightning_delayed.CommHook or None, got {inner!r}")
        if isinstance(inner, CompressedHook):
            raise ValueError("inner is already a CompressedHook: compressing twice only loses precision")
        self.inner: CommHook = inner if inner is not None else AllReduceHook()
        self.compressor = Compressor(compression, error_feedback)

    def set_group(self, group: dist.ProcessGroup | None) -> None:
        super().set_group(group)
        self.inner.set_group(group)

    @property
    def compression(self) -> str:
        return self.compressor.compression

    @property
    def error_feedback(self) -> bool:
        return self.compressor.error_feedback

    def launch(
        self,
        tensors: Sequence[Tensor],
        *,
        weight: float | None = None,
        keys: Sequence[str] | None = None,
        what: str = "tensors",
    ) -> Pending:
        if keys is None:  # one-off average: full precision (see the module docstring)
            return self.inner.launch(tensors, weight=weight, keys=None, what=what)
        if len(keys) != len(tensors):
            raise ValueError(f"keys must name every tensor: got {len(keys)} keys for {len(tensors)} tensors")
        with torch.no_grad():
            wires = []
            for t, key in zip(tensors, keys, strict=True):
                source = t.detach() if weight is None else t.detach() * weight
                wires.append(self.compressor.compress(source, key) if self.compressor.compresses(source) else source)
            wire_keys = list(keys)
            if weight is not None and tensors:
                wires.append(torch.tensor([float(weight)], dtype=torch.float64, device=tensors[0].device))
                wire_keys.append("weight")
        pending = self.inner.launch(wires, keys=wire_keys, what=what)
        return _DecompressedPending(pending, [t.dtype for t in tensors], weighted=weight is not None and bool(tensors))

    def state_dict(self) -> dict[str, Any]:
        return {"compressor": self.compressor.state_dict(), "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.compressor.load_state_dict(state.get("compressor", {}))
        self.inner.load_state_dict(state.get("inner", {}))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(inner={self.inner!r}, compression={self.compression!r}, "
            f"error_feedback={self.error_feedback})"
        )
