"""The package version, in one place.

``pyproject.toml`` reads it (``[tool.setuptools.dynamic]``) for the wheel and sdist metadata and
``lightning_delayed.__version__`` re-exports it, so the two cannot disagree
(``tests/package/test_install.py`` checks the installed wheel).
"""

from __future__ import annotations

__version__ = "0.1.0"
