"""``lightning_delayed.core`` and ``lightning_delayed.comm`` import and work with torch alone.

Each test runs a fresh interpreter in which a ``sys.meta_path`` finder makes ``lightning`` (and
``pytorch_lightning``, ``lightning_fabric``) fail to import, as on a machine without Lightning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCK_LIGHTNING = textwrap.dedent(
    """
    import sys

    BLOCKED = ("lightning", "pytorch_lightning", "lightning_fabric")

    class BlockLightning:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, BlockLightning())

    def lightning_modules():
        return sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    """
)


def run_blocked(code: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    script = BLOCK_LIGHTNING + textwrap.dedent(code)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_the_blocker_really_blocks_lightning() -> None:
    result = run_blocked(
        """
        import json
        try:
            import lightning.pytorch
        except ImportError as e:
            print(json.dumps({"error": type(e).__name__, "name": e.name}))
        """
    )
    assert result == {"error": "ModuleNotFoundError", "name": "lightning"}


def test_core_and_comm_import_without_lightning() -> None:
    result = run_blocked(
        """
        import importlib, json, pkgutil

        import lightning_delayed.comm
        import lightning_delayed.core

        imported = []
        for package in (lightning_delayed.core, lightning_delayed.comm):
            for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
                importlib.import_module(info.name)
                imported.append(info.name)
        print(json.dumps({"imported": imported, "lightning": lightning_modules()}))
        """
    )
    assert "lightning_delayed.core.odsgd" in result["imported"]  # type: ignore[operator]
    assert "lightning_delayed.comm.buckets" in result["imported"]  # type: ignore[operator]
    assert len(result["imported"]) >= 13  # type: ignore[arg-type]
    assert result["lightning"] == []


def test_package_without_lightning_gives_torch_names_and_names_lightning_for_the_rest() -> None:
    result = run_blocked(
        """
        import json

        import torch
        import lightning_delayed
        from lightning_delayed import AllReduceHook, ODSGDConfig

        config = ODSGDConfig(local_lr=0.1, dc_lambda=0.0, warmup_steps=2)
        try:
            ODSGDConfig(local_lr=-1.0)
            refused = False
        except ValueError:
            refused = True
        try:
            lightning_delayed.ODSGDStrategy
            message = None
        except ImportError as e:
            message = str(e)
        print(json.dumps({
            "local_lr": config.local_lr, "refused": refused, "message": message,
            "hook": type(AllReduceHook()).__name__, "lightning": lightning_modules(),
        }))
        """
    )
    assert result["local_lr"] == 0.1 and result["refused"] is True and result["hook"] == "AllReduceHook"
    message = str(result["message"])
    assert "lightning_delayed.ODSGDStrategy needs Lightning" in message and "pip install lightning" in message
    assert result["lightning"] == []


def test_with_lightning_the_package_registers_every_name_at_import() -> None:
    code = textwrap.dedent(
        """
        import json
        import lightning_delayed
        from lightning.pytorch.strategies import StrategyRegistry
        names = [n for c in lightning_delayed.STRATEGIES for n in (c.strategy_name, c.strategy_name + "_spawn")]
        print(json.dumps({"missing": [n for n in names if n not in StrategyRegistry], "count": len(names)}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"missing": [], "count": 20}  # 10 strategies, each also as <name>_spawn
