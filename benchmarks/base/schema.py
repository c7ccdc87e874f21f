"""The results JSON of :mod:`benchmarks.run`: typed records, validated when written and when read back.

A results file (``benchmarks/results/<YYYYMMDD-HHMMSS>.json``) is one :class:`Results`:

* ``meta`` (:class:`Meta`): when, where (machine, versions), how (link kind, accelerator, steps,
  repeats, strategies' arguments) and the command;
* ``links`` (:class:`Link`): per bandwidth, the all-reduce of a ResNet-18-sized buffer
  (:class:`AllReduce`) and the batch sizes chosen there;
* ``throughput`` (:class:`ThroughputRun`): one record per run of one cell (strategy, link, batch,
  round): its per-rank figures (:class:`RankFigures`) when ``status`` is ``"ok"``, the reason in
  ``error`` when it is ``"failed"`` (a failed run is a valid record: the page lists it);
* ``accuracy`` (:class:`AccuracyEntry`), ``calibration`` (:class:`Calibration`);
* one section per phase (``own_cost``, ``lm``, ...), each an object the phase's own ``section``
  reads; a phase that raised is ``{"status": "failed", "error": ...}``.

Older files: the oldest results (``20261121-131116.json``) predate the interleaved repeats; they
carry no ``meta.repeats`` and no ``round`` on the throughput runs. Both fields are optional with a
documented default (:data:`DEFAULTS`: one repeat, round 0), the defaults the report has always
applied, so that file still validates and renders. Every other field marked required here is
refused when absent: :func:`validate` raises :class:`SchemaError` naming the file, the path of the
field (``throughput[3].ranks[0].step_s``) and what it should be, instead of a ``KeyError`` deep in
the report. Extra fields are allowed (ranks record more than the report reads).
"""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict


class Machine(TypedDict):
    cpu: str
    cores: int | None
    system: str
    memory_bytes: NotRequired[int | None]


class Versions(TypedDict):
    torch: str
    lightning: str
    torchvision: str
    lightning_delayed: str
    python: str


class Rerun(TypedDict):
    """A phase measured again alone after the run; its result replaced the run's in the JSON."""

    command: str
    date: str
    why: str
    seconds: NotRequired[float | None]


class Meta(TypedDict):
    date: str
    machine: Machine
    versions: Versions
    emulated: bool
    """Whether the links were emulated (network namespaces, ``tbf``); False: loopback or GPUs."""
    fallback_reason: str | None
    quick: bool
    bandwidths: list[str]
    steps: int
    warmup: int
    sync_every: int
    strategy_kwargs: dict[str, dict[str, Any]]
    epochs: int
    seeds: list[int]
    target_acc: float
    command: str
    json_path: str
    repeats: NotRequired[int]
    """Interleaved rounds per throughput cell; absent in the oldest file: 1 (:data:`DEFAULTS`)."""
    accelerator: NotRequired[Literal["cpu", "gpu"]]
    """``--accelerator``; absent before it existed: ``"cpu"`` (:data:`DEFAULTS`)."""
    throughput_bandwidths: NotRequired[list[str]]
    workloads: NotRequired[list[str]]
    skipped_phases: NotRequired[list[str]]
    total_s: NotRequired[float]
    phase_s: NotRequired[dict[str, float]]
    reruns: NotRequired[dict[str, Rerun]]


class AllReduce(TypedDict):
    """The slowest rank's all-reduce timing of one fp32 buffer."""

    nbytes: int
    bytes_per_s: float
    seconds_per_op: float
    wire_bytes_per_op: NotRequired[float | None]


class BatchChoice(TypedDict):
    first: int
    final: int
    target_ratio: float
    first_ratio: NotRequired[float]


class Link(TypedDict):
    bandwidth: str
    bps: int | None
    allreduce: AllReduce | None
    batches: NotRequired[dict[str, int]]
    batch_choice: NotRequired[dict[str, BatchChoice]]
    error: NotRequired[str]


class RankFigures(TypedDict):
    """What one rank measured over its timed window (:func:`benchmarks.base.tasks.task_throughput`)."""

    samples_per_s: float
    step_s: float
    blocked_s_per_step: float
    bytes_per_step: float
    peak_rss_mb: float
    wire_bytes_per_step: NotRequired[float | None]
    rank: NotRequired[int]


class ThroughputRun(TypedDict):
    """One run of one throughput cell (strategy, link, batch) in one round."""

    strategy: str
    bandwidth: str
    bps: int | None
    batch_size: int
    role: Literal["compare", "calibration", "probe"]
    status: Literal["ok", "failed"]
    round: NotRequired[int]
    """Absent in the oldest file: 0 (:data:`DEFAULTS`)."""
    ranks: NotRequired[list[RankFigures]]
    """Required when ``status`` is ``"ok"``."""
    error: NotRequired[str]
    """Required when ``status`` is ``"failed"``."""


class Calibration(TypedDict):
    """The compute-only step ``t(B) = a + b B`` fitted on two batches."""

    points: list[list[float]]
    a: float
    b: float


class Epoch(TypedDict):
    epoch: int
    wall_s: float
    acc: float


class DigitsRun(TypedDict):
    seed: NotRequired[int]
    epochs: list[Epoch]


class AccuracyEntry(TypedDict):
    strategy: str
    bandwidth: str
    bps: int | None
    runs: list[DigitsRun]
    status: Literal["ok", "failed"]
    error: NotRequired[str]


class Results(TypedDict):
    meta: Meta
    links: list[Link]
    throughput: list[ThroughputRun]
    accuracy: list[AccuracyEntry]
    calibration: NotRequired[Calibration]


DEFAULTS = {"meta.repeats": 1, "meta.accelerator": "cpu", "throughput[].round": 0}
"""Optional fields of older files and the value the report reads for them."""

RESULT_NAME = re.compile(r"\d{8}-\d{6}\.json")
"""A dated results file of :mod:`benchmarks.run`; other JSON there (contention-*, groups_wire) is not one."""

WITH_STATUS = {"ok": "ranks", "failed": "error"}
"""A throughput run's ``status`` and the field it requires."""


class SchemaError(ValueError):
    """A results file that is not a :class:`Results`: names the file, the field's path and what it should be."""


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if typing.is_typeddict(tp):
        return f"an object ({tp.__name__})"
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}"
    if origin is dict:
        return f"an object of {_describe(typing.get_args(tp)[1]).removeprefix('an ').removeprefix('a ')}"
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    return str(tp)


def _fields(tp: Any) -> tuple[dict[str, Any], list[str]]:
    """A TypedDict's field types and its required fields, in declaration order.

    Read from the annotations (``NotRequired[...]`` marks an optional field), not from
    ``__required_keys__``: under ``from __future__ import annotations`` Python 3.11 cannot see the
    qualifier in a string annotation and would call every field required.
    """
    hints = typing.get_type_hints(tp, include_extras=True)
    types_, required = {}, []
    for key, hint in hints.items():
        if typing.get_origin(hint) is NotRequired:
            types_[key] = typing.get_args(hint)[0]
        else:
            types_[key] = hint
            required.append(key)
    return types_, required


def _problem(value: Any, tp: Any, path: str) -> tuple[str, str] | None:
    """``(path, what it should be)`` of the first field of ``value`` that is not a ``tp``, or None."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        found = [_problem(value, a, path) for a in typing.get_args(tp)]
        if any(f is None for f in found):
            return None
        deeper = [f for f in found if f is not None and f[0] != path]  # the right kind, a wrong field inside
        return deeper[0] if deeper else (path, _describe(tp))
    if origin is Literal:
        return None if value in typing.get_args(tp) else (path, _describe(tp))
    if tp is type(None):
        return None if value is None else (path, "null")
    if tp is bool:
        return None if isinstance(value, bool) else (path, _describe(tp))
    if tp in (int, float):
        ok = isinstance(value, int) or (tp is float and isinstance(value, float))
        return None if ok and not isinstance(value, bool) else (path, _describe(tp))
    if tp is str:
        return None if isinstance(value, str) else (path, _describe(tp))
    if origin is list:
        if not isinstance(value, list):
            return path, _describe(tp)
        (item,) = typing.get_args(tp)
        for i, v in enumerate(value):
            if (p := _problem(v, item, f"{path}[{i}]")) is not None:
                return p
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return path, _describe(tp)
        item = typing.get_args(tp)[1]
        for k, v in value.items():
            if (p := _problem(v, item, f"{path}.{k}")) is not None:
                return p
        return None
    if typing.is_typeddict(tp):
        if not isinstance(value, dict):
            return path, _describe(tp)
        hints, required = _fields(tp)
        prefix = f"{path}." if path else ""
        for key in required:
            if key not in value:
                return f"{prefix}{key}", f"present: {_describe(hints[key])} (missing)"
        for key, v in value.items():
            if key in hints and (p := _problem(v, hints[key], f"{prefix}{key}")) is not None:
                return p
        return _record_rule(value, tp, path)
    raise TypeError(f"schema type {tp!r} at {path} is not supported")


def _record_rule(value: dict[str, Any], tp: Any, path: str) -> tuple[str, str] | None:
    """The rules a type cannot say: an ok run carries its ranks, a failed one its error."""
    if tp is ThroughputRun and value.get("status") == "failed" and "error" not in value:
        return f"{path}.error", 'present: a string, the reason of a "failed" run (missing)'
    if tp is ThroughputRun and value.get("status") == "ok" and not value.get("ranks"):
        return f"{path}.ranks", 'present: the per-rank figures of an "ok" run, one object per rank (missing)'
    return None


def validate(data: Any, source: str | Path, phases: typing.Iterable[str] = ()) -> Results:
    """``data`` if it is a :class:`Results` (and every name of ``phases`` present is an object), else raise.

    Raises:
        SchemaError: ``<source>: <field path>: should be <what>``.
    """
    found = _problem(data, Results, "")
    if found is None:
        for name in phases:
            section = data.get(name)
            if section is None:
                continue
            if not isinstance(section, dict):
                found = (name, "an object (the phase's section)")
            elif section.get("status") == "failed" and not isinstance(section.get("error"), str):
                found = (f"{name}.error", 'a string, why the phase failed (its section says "failed")')
            if found:
                break
    if found is not None:
        path, what = found
        raise SchemaError(f"{source}: {path or '(top level)'}: should be {what}")
    return typing.cast(Results, data)


def latest(directory: Path, exclude: str | None = None) -> Path:
    """The newest dated results file in ``directory`` (other than one named ``exclude``)."""
    files = sorted(p for p in directory.glob("*.json") if RESULT_NAME.fullmatch(p.name) and p.name != exclude)
    if not files:
        raise SystemExit(f"error: no results JSON in {directory}; run `python -m benchmarks.run` first")
    return files[-1]


def load(path: Path, phases: typing.Iterable[str] = ()) -> dict[str, Any]:
    """Read and validate one results file (see :func:`validate`); a file that is not JSON is refused too."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path}: not JSON ({e})") from e
    return dict(validate(data, path, phases))


def write(path: Path, data: dict[str, Any], phases: typing.Iterable[str] = ()) -> None:
    """Validate ``data`` and write it to ``path``.

    An invalid record is a bug of the harness; it is not thrown away: it goes to
    ``<path stem>.invalid.json`` (not a dated name, so no report picks it up) and the error is raised.
    """
    text = json.dumps(data, indent=1)
    try:
        validate(json.loads(text), path, phases)
    except SchemaError:
        path.with_name(f"{path.stem}.invalid.json").write_text(text)
        raise
    path.write_text(text)
