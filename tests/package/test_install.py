"""The built wheel, installed (not editable) into a fresh environment, trains on two ranks.

What this guards against: a module, data file or dependency that exists only in the source tree
(a subpackage missing from ``packages.find``, ``py.typed`` left out of package data, a version
read from a file the wheel does not ship, a dependency missing from the metadata). The editable
install of the development environment would hide every one of these, so the test must not see
the source tree at all.

How the environment is built, and why it is isolated:

* The files of a clean checkout (``git ls-files``: tracked, plus untracked files not ignored) are
  copied to a scratch directory, so build leftovers of the source tree (a stale
  ``*.egg-info/SOURCES.txt`` lists files that package-data no longer names) cannot reach the
  build. There ``python -m build --no-isolation`` builds the sdist, then the wheel *from the
  sdist* (so the sdist is tested too), with the pinned setuptools of the development
  environment: no network.
* ``python -m venv --without-pip`` makes a fresh environment. Not ``--system-site-packages``:
  the development environment's site-packages holds the editable install of this package (its
  ``__editable__*.pth`` finder points at the source tree), which would leak.
* Reinstalling torch and Lightning into it would cost minutes, so the third-party packages are
  borrowed: a directory of symlinks to every entry of the development site-packages *except*
  this package's own (``lightning_delayed*``, ``__editable__*``) and every ``.pth`` file, put on
  the fresh environment's path by one ``.pth`` line. Directories named in a ``.pth`` file are
  only appended to ``sys.path``; their own ``.pth`` files are not run, and none are linked anyway.
* ``pip --python <fresh> install --no-index <wheel>`` installs the wheel with its dependencies
  resolved against that path, so a dependency absent from the wheel's metadata is not caught
  here, but one the metadata names and the environment lacks fails the install.
* The ranks run ``<fresh>/bin/python -I`` (no ``PYTHONPATH``, no user site, no script directory on
  the path) from a scratch directory outside the source tree, and assert that
  ``lightning_delayed`` was imported from the fresh environment, that its ``__version__`` equals
  the installed distribution's version and that ``py.typed`` is installed. Then each rank fits a
  tiny model under ``strategy="odsgd"`` and ``strategy="overlap_local_sgd"`` (plain names, so the
  registration at import is tested too) on 2 gloo ranks, and the replicas must end identical.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

from tests.helpers.launch import REPO, free_port

SMOKE = r"""
import importlib.metadata
import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_delayed

here = Path(lightning_delayed.__file__).resolve()
assert Path(sys.prefix).resolve() in here.parents, f"imported from {here}, not the fresh environment {sys.prefix}"
assert (here.parent / "py.typed").is_file(), "py.typed is not installed"
dist = importlib.metadata.distribution("lightning-delayed")
assert dist.version == lightning_delayed.__version__, (dist.version, lightning_delayed.__version__)


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(int(os.environ["RANK"]))
        return DataLoader(TensorDataset(torch.randn(48, 4, generator=g), torch.randn(48, 1, generator=g)), batch_size=8)


result = {"file": str(here), "version": lightning_delayed.__version__}
for name in ("odsgd", "overlap_local_sgd"):
    model = Tiny()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=name, max_steps=6, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model)
    assert trainer.global_step == 6, trainer.global_step
    result[name] = [p.detach().double().flatten().tolist() for p in model.parameters()]
Path(sys.argv[1]).write_text(json.dumps(result))
"""


def _source_version() -> str:
    tree = ast.parse((REPO / "lightning_delayed" / "_version.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "__version__":
            return str(ast.literal_eval(node.value))
    raise AssertionError("lightning_delayed/_version.py defines no __version__")


def _run(cmd: list[str], timeout: float, **kwargs: object) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{cmd} exited with {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


def _borrow_site_packages(deps: Path) -> None:
    """Symlink every third-party entry of the development environment into ``deps``."""
    deps.mkdir()
    dev_sites = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    for site_dir in dict.fromkeys(Path(d) for d in dev_sites if Path(d).is_dir()):
        for entry in site_dir.iterdir():
            name = entry.name
            own = name.startswith(("lightning_delayed", "lightning-delayed", "__editable__"))
            if own or name.endswith(".pth") or name == "__pycache__" or (deps / name).exists():
                continue
            (deps / name).symlink_to(entry)


def _clean_checkout(dest: Path) -> Path:
    """Copy the files a fresh clone would have (plus untracked, not ignored ones) to ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the working tree is not part of the checkout
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_wheel_installs_into_fresh_environment_and_fits_on_two_ranks(tmp_path: Path) -> None:
    version = _source_version()
    dist = tmp_path / "dist"
    src = _clean_checkout(tmp_path / "src")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)], timeout=300)
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    assert wheel.name == f"lightning_delayed-{version}-py3-none-any.whl"

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"lightning_delayed-{version}.dist-info/METADATA").decode()
    assert "lightning_delayed/py.typed" in names
    assert f"lightning_delayed-{version}.dist-info/licenses/LICENSE" in names
    assert f"\nVersion: {version}\n" in metadata
    assert "\nLicense-Expression: Apache-2.0\n" in metadata
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    for needed in ("LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "lightning_delayed/py.typed"):
        assert needed in members, f"{needed} missing from the sdist"
    assert f"## {version}" in (REPO / "CHANGELOG.md").read_text(), f"CHANGELOG.md has no {version} entry"

    # No PYTHONPATH anywhere below: the test runner's (the source tree) would put the source package
    # on the path, and any lightning_delayed.egg-info there would make pip see it as installed already.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MASTER_", "LD_"))}
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120, env=env)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    _borrow_site_packages(tmp_path / "deps")
    (Path(purelib) / "_borrowed_dependencies.pth").write_text(f"{tmp_path / 'deps'}\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "--no-cache-dir"]
    _run([*pip, str(wheel)], timeout=300, env=env)

    work = tmp_path / "work"
    work.mkdir()
    (work / "smoke.py").write_text(SMOKE)
    port = free_port()
    procs = []
    for rank in range(2):
        env_rank = dict(env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank))
        env_rank.update(LOCAL_RANK=str(rank), NODE_RANK="0", OMP_NUM_THREADS="1")
        log = open(work / f"rank{rank}.log", "w")  # noqa: SIM115 - closed below
        cmd = [str(python), "-I", "smoke.py", str(work / f"result{rank}.json")]
        procs.append((subprocess.Popen(cmd, env=env_rank, cwd=work, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [proc.wait(timeout=240) for proc, _ in procs]
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    logs = "\n".join(f"--- rank {r} ---\n{(work / f'rank{r}.log').read_text()[-4000:]}" for r in range(2))
    assert codes == [0, 0], logs

    results = [json.loads((work / f"result{r}.json").read_text()) for r in range(2)]
    for result in results:
        assert Path(result["file"]).is_relative_to(venv.resolve()), result["file"]
        assert not Path(result["file"]).is_relative_to(REPO), result["file"]
        assert result["version"] == version
    for name in ("odsgd", "overlap_local_sgd"):
        assert results[0][name] == results[1][name], f"{name}: replicas differ after fit"
