"""What a workload declares once so that :mod:`benchmarks.run` can run it and the report can show it.

Each workload module (``benchmarks/workloads/<name>.py``, or a package) ends with one declaration::

    PHASE = Phase(
        name="lm",
        add_args=add_args,        # its options, in an argument group of the runner's parser
        measure=measure,          # measure(args, shaped, runner, out): fills out[name]
        section=section,          # section(data, img_dir) -> markdown (and any plots it draws)
        estimate_s=estimate_s,    # seconds on a quiet machine, for the budget printed at start
        writes=("lm", "img/benchmarks_lm.png"),
    )

and :data:`benchmarks.run.PHASES` gets one line, ``"lm": "benchmarks.workloads.lm"``. The runner
imports the module only when the phase is asked for (a missing optional dependency leaves the
others runnable) and checks that the module's ``PHASE`` has that name.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.base.launch import Runner
    from benchmarks.base.netns import ShapedLink

AddArgs = Callable[[argparse.ArgumentParser], None]
Measure = Callable[[argparse.Namespace, "ShapedLink", "Runner", dict[str, Any]], None]
Section = Callable[[dict[str, Any], Path], str]
Estimate = Callable[[argparse.Namespace], float]


@dataclass(frozen=True)
class Phase:
    """One workload of the benchmark run.

    Attributes:
        name: the phase's name on ``--workloads`` and its key in the results JSON.
        add_args: adds the phase's options (``--<name>-...``) to the runner's parser.
        measure: runs the phase on the runner's link and stores its section in ``out[name]``.
        section: the phase's markdown for ``docs/benchmarks.md`` from the whole results dict;
            draws its plots into ``img_dir``.
        estimate_s: the phase's run time on a quiet machine (s), from the parsed arguments.
        writes: what the phase writes: its results key and the files of its section (relative to
            ``docs/``), for the README and the checks.
    """

    name: str
    add_args: AddArgs
    measure: Measure
    section: Section
    estimate_s: Estimate
    writes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"Phase name must be an identifier (a results key), got {self.name!r}")
        if not self.writes or self.writes[0] != self.name:
            raise ValueError(f"Phase {self.name!r}: writes must start with its results key {self.name!r}, "
                             f"got {self.writes!r}")  # fmt: skip


class Options:
    """One phase's options, in one argument group of the runner's parser, each ``--<phase>-<option>``.

    The prefix keeps the phases from colliding on that one parser. An option's type is its
    default's (``int``, ``float``; a string or ``None``: a string) unless ``type=`` is given::

        opt = Options(parser, "lm", "character-level transformer, time to a target loss")
        opt("batch-size", 16, "windows per rank and step")        # --lm-batch-size, int
        opt.flag("interleave", "one process pair per (seed, strategy)")
    """

    def __init__(self, parser: argparse.ArgumentParser, phase: str, title: str) -> None:
        self.group = parser.add_argument_group(f"phase {phase} ({title})")
        self.prefix = f"--{phase.replace('_', '-')}-"

    def __call__(self, option: str, default: Any, help: str, **kwargs: Any) -> None:
        if isinstance(default, int | float) and not isinstance(default, bool):
            kwargs.setdefault("type", type(default))
        self.group.add_argument(self.prefix + option, default=default, help=help, **kwargs)

    def flag(self, option: str, help: str) -> None:
        self.group.add_argument(self.prefix + option, action="store_true", help=help)
