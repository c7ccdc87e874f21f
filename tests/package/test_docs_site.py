"""The documentation site builds with ``mkdocs build --strict`` (issue 14).

``mkdocs.yml`` turns every reader-facing defect into a warning (a page missing from the nav, a
link to a missing page or heading, a link leaving the site, a docstring mkdocstrings cannot
render) and ``--strict`` turns warnings into a failed build, so this test fails on any of them.
Not ``--quiet``: it hides the warnings from ``--strict``, which then passes a broken link.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.launch import REPO


def test_site_builds_strict(tmp_path: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    warnings = [line for line in proc.stderr.splitlines() if not line.startswith("INFO")]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(warnings[-40:])
    for page in ("index.html", "getting-started/index.html", "algorithms/index.html", "api/index.html"):
        assert (tmp_path / "site" / page).is_file(), f"{page} was not built"
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "ODSGDStrategy" in api and "DelayedAlgorithm" in api, "the API reference is missing its classes"
