"""Code, tests and docs cite ``docs/algorithms/<name>.md``, never a specification outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE_SPEC = "ALGORITHMS" + ".md"  # spelled in two parts so that this file does not cite it


def repository_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files (what a commit would hold)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    files = [ROOT / name for name in listed.split("\0") if name]
    return [f for f in files if f.is_file()]


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data:
        return None  # binary (images)
    return data.decode("utf-8", errors="replace")


def test_no_file_cites_the_outside_specification() -> None:
    files = repository_files()
    assert any(f.name == "_compat.py" for f in files)  # the listing really covers the package
    offenders = []
    for path in files:
        text = text_of(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_SPEC.lower() in line.lower():
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_every_cited_algorithm_page_exists() -> None:
    missing = []
    for path in repository_files():
        text = text_of(path)
        if text is None:
            continue
        for name in re.findall(r"docs/algorithms/([a-z_]+)\.md", text):
            if not (ROOT / "docs" / "algorithms" / f"{name}.md").is_file():
                missing.append(f"{path.relative_to(ROOT)}: docs/algorithms/{name}.md")
    assert missing == []
