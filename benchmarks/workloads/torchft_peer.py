"""Our ``diloco`` / ``streaming_diloco`` against torchft's ``DiLoCo`` on the same model, data and settings.

torchft (pytorch/torchft, ``pip install 'lightning-delayed[bench]'``) implements DiLoCo and Streaming
DiLoCo as a wrapper around a plain training loop, driven by its fault-tolerance ``Manager``. Here
both run in the same 2 gloo ranks, one after the other, from the same initial weights, the same
per-rank batches and the same inner (AdamW) and outer (Nesterov SGD) optimizers; after every
optimizer step the weights are compared::

    python -m benchmarks.torchft_peer --steps 24 --json torchft_peer.json

torchft's ``Manager`` needs a lighthouse server and reconfigurable process groups; neither adds
anything to the rule, so :class:`GlooManager` stands in for it: ``allreduce`` is an asynchronous
gloo all-reduce of the tensor in place followed by the division by the world size (what the
real manager's average does), every quorum commits, and ``current_step`` counts the commits.
The speed comparison runs torchft's real ``Manager`` and lighthouse: :mod:`benchmarks.workloads.peer`.

Rule differences (see docs/algorithms/streaming_diloco.md): torchft launches a fragment ``delay``
steps *before* its slot and applies it at the slot; we launch it at the slot and apply it
``delay`` steps later. With ``delay=0`` the schedules coincide and the trajectories agree to
float64 rounding (torchft mixes with ``lerp``); with ``delay>0`` every fragment is synchronised
``delay`` steps earlier in torchft, so the trajectories differ by design. torchft has no
end-of-training synchronisation and does not average buffers (the model here has none).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

WORLD = 2
SETTINGS: list[dict[str, Any]] = [
    {"name": "diloco H=4", "sync_every": 4, "num_fragments": 1, "delay": 0, "alpha": 0.0},
    {"name": "diloco H=6", "sync_every": 6, "num_fragments": 1, "delay": 0, "alpha": 0.0},
    {"name": "streaming P=2 H=4 delay=0 alpha=0.5", "sync_every": 4, "num_fragments": 2, "delay": 0, "alpha": 0.5},
    {"name": "streaming P=3 H=6 delay=0 alpha=0.25", "sync_every": 6, "num_fragments": 3, "delay": 0, "alpha": 0.25},
    {"name": "streaming P=2 H=4 delay=1 alpha=0.5", "sync_every": 4, "num_fragments": 2, "delay": 1, "alpha": 0.5},
]
OUTER = {"lr": 0.7, "momentum": 0.9, "nesterov": True}
INNER_LR = 1e-2


class _AveragingWork:
    """A gloo all-reduce (SUM) in flight whose ``wait`` divides the tensor by the world size once."""

    def __init__(self, tensor: Tensor, work: Any) -> None:
        self.tensor, self.work, self.done = tensor, work, False

    def wait(self, timeout: Any = None) -> bool:
        if not self.done:
            self.work.wait()
            self.tensor.div_(dist.get_world_size())
            self.done = True
        return True


class GlooManager:
    """The part of ``torchft.manager.Manager`` that ``torchft.local_sgd.DiLoCo`` uses, on plain gloo."""

    _use_async_quorum = False

    def __init__(self) -> None:
        self.step = 0

    def start_quorum(self) -> None:
        pass

    def current_step(self) -> int:
        return self.step

    def should_commit(self) -> bool:
        self.step += 1
        return True

    def allreduce(self, tensor: Tensor, should_quantize: bool = False) -> _AveragingWork:
        assert not should_quantize
        return _AveragingWork(tensor, dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True))

    def register_state_dict_fn(self, key: str, load_fn: Any, save_fn: Any) -> None:
        pass

    def allow_state_dict_read(self) -> None:
        pass

    def disallow_state_dict_read(self) -> None:
        pass


def build_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).double()


def batches(rank: int, steps: int, batch_size: int = 16) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(100 + rank)
    w = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    out = []
    for _ in range(steps):
        x = torch.randn(batch_size, 8, generator=gen, dtype=torch.float64)
        out.append((x, torch.tanh(x @ w) + 0.1 * torch.randn(batch_size, 4, generator=gen, dtype=torch.float64)))
    return out


def _train_step(net: nn.Module, opt: torch.optim.Optimizer, batch: tuple[Tensor, Tensor]) -> None:
    opt.zero_grad()
    nn.functional.mse_loss(net(batch[0]), batch[1]).backward()
    opt.step()


def run_ours(setting: dict[str, Any], data: list[tuple[Tensor, Tensor]]) -> list[list[Tensor]]:
    from lightning_delayed.comm.communicator import AllReduceHook
    from lightning_delayed.core.diloco import DiLoCo, DiLoCoConfig
    from lightning_delayed.core.streaming_diloco import StreamingDiLoCo, StreamingDiLoCoConfig, layer_fragments

    net = build_net()
    params = list(net.parameters())
    inner = torch.optim.AdamW(params, lr=INNER_LR)
    outer = {"outer_lr": OUTER["lr"], "outer_momentum": OUTER["momentum"], "nesterov": OUTER["nesterov"]}
    algo: DiLoCo | StreamingDiLoCo
    if setting["num_fragments"] == 1 and setting["delay"] == 0 and setting["alpha"] == 0:
        algo = DiLoCo(DiLoCoConfig(sync_every=setting["sync_every"], **outer), params, [], inner, AllReduceHook())
    else:
        cfg = StreamingDiLoCoConfig(
            sync_every=setting["sync_every"],
            num_fragments=setting["num_fragments"],
            delay=setting["delay"],
            alpha=setting["alpha"],
            **outer,
        )
        split = layer_fragments(net, params, cfg.num_fragments, "strided")
        algo = StreamingDiLoCo(cfg, params, [], inner, split, AllReduceHook())
    history = []
    for batch in data:
        _train_step(net, inner, batch)
        algo.after_optimizer_step()
        history.append([p.detach().clone() for p in params])
    return history


def run_torchft(setting: dict[str, Any], data: list[tuple[Tensor, Tensor]]) -> list[list[Tensor]]:
    from torchft.local_sgd import DiLoCo as TorchftDiLoCo

    net = build_net()
    params = list(net.parameters())
    p = setting["num_fragments"]
    layers = [m for m in net if any(True for _ in m.parameters(recurse=False))]
    # our "strided" pattern: layer j in fragment j % P
    fragments = [nn.ModuleList([layer for j, layer in enumerate(layers) if j % p == q]) for q in range(p)]
    inner = torch.optim.AdamW(params, lr=INNER_LR)
    outers = [torch.optim.SGD(f.parameters(), **OUTER) for f in fragments]  # type: ignore[arg-type]
    history = []
    with TorchftDiLoCo(
        GlooManager(),  # type: ignore[arg-type]
        list(fragments),
        inner,
        outers,
        sync_every=setting["sync_every"],
        fragment_sync_delay=setting["delay"],
        fragment_update_alpha=setting["alpha"],
    ):
        for batch in data:
            _train_step(net, inner, batch)  # torchft's sync runs in the inner optimizer's step post-hook
            history.append([q.detach().clone() for q in params])
    return history


def _rank_main(rank: int, port: int, steps: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    data = batches(rank, steps)
    results = []
    for setting in SETTINGS:
        ours, theirs = run_ours(setting, data), run_torchft(setting, data)
        per_step = [
            max((a - b).abs().max().item() for a, b in zip(x, y, strict=True))
            for x, y in zip(ours, theirs, strict=True)
        ]
        moved = max((a - b).abs().max().item() for a, b in zip(ours[-1], build_net().parameters(), strict=True))
        results.append({**setting, "per_step_max_abs_diff": per_step, "distance_travelled": moved})
    gathered: list[Any] = [None] * WORLD
    dist.all_gather_object(gathered, results)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(
                {"steps": steps, "outer": OUTER, "inner": {"AdamW": {"lr": INNER_LR}}, "ranks": gathered}, f, indent=1
            )
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per setting")
    parser.add_argument("--json", default="torchft_peer.json", help="where to write the per-step differences")
    args = parser.parse_args(argv)
    try:
        import torchft  # noqa: F401
    except ImportError:
        sys.exit("torchft is not installed: pip install 'lightning-delayed[bench]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank_main, args=(port, args.steps, args.json), nprocs=WORLD, start_method="spawn")
    with open(args.json) as f:
        report = json.load(f)
    print(f"| setting | max abs diff, every step ({args.steps} steps, 2 ranks) | first step > 1e-12 | weights moved |")
    print("|---|---:|---:|---:|")
    for i, setting in enumerate(SETTINGS):
        diffs = [max(step) for step in zip(*(r[i]["per_step_max_abs_diff"] for r in report["ranks"]), strict=True)]
        first = next((k for k, d in enumerate(diffs) if d > 1e-12), None)
        moved = max(r[i]["distance_travelled"] for r in report["ranks"])
        print(f"| {setting['name']} | {max(diffs):.2e} | {'-' if first is None else first} | {moved:.2e} |")


if __name__ == "__main__":
    main()
