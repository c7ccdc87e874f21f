"""``DelayedLightningCLI``: LightningCLI whose error for a bad strategy argument names the argument first.

Two kinds of mistake, two places where LightningCLI reports them badly:

* **Parsing** (an unknown ``init_args`` name, a value of the wrong type). jsonargparse stops at the
  first problem of ``trainer.strategy``, prints ~50 lines of usage, then a report of the
  ``str | Strategy`` union of ``Trainer(strategy=...)`` with no suggestion for a misspelled name.
  ``DelayedLightningCLI`` checks *every* ``init_args`` entry of a ``lightning_delayed`` strategy and
  reports all the problems, one line each, before anything else, and no usage text (from a
  config file, or ``--trainer.strategy.init_args.sync_every=eight`` on the command line)::

      trainer.strategy.init_args.sync_every: StreamingDiLoCoStrategy expects int, got 'eight'
      trainer.strategy.init_args.num_fragmnts: StreamingDiLoCoStrategy got an unexpected keyword
        argument 'num_fragmnts'; did you mean 'num_fragments'? It accepts ... (one line)
      tip: For details of accepted options run: cli.py fit --help

  then exits with status 2, as jsonargparse does (``SystemExit(2)``, the lines on stderr). With
  ``parser_kwargs={"exit_on_error": False}`` the same lines are the message of the
  ``argparse.ArgumentError`` raised instead. The unknown-name line is the one Python construction
  raises (``strategies/checks.py``: ``unknown_keyword_message``), so both suggest the same name.

* **Construction** (a value of the right type that ``__init__`` refuses, ``local_lr: -1``).
  jsonargparse formats the exception into its union report and does not keep it, so this CLI
  rebuilds the strategy from the parsed ``class_path``/``init_args`` to get the refusal back, and
  raises it alone::

      ValueError: trainer.strategy (lightning_delayed.ODSGDStrategy): local_lr must be ... got -1.0

  Anything else, and any refusal it cannot reproduce, is re-raised unchanged. A construction
  refusal is found only once the parsing problems are fixed (the strategy is not built before).

How the parsing check hooks in, through extension points only (it imports no private name and
never reads jsonargparse's messages): the CLI's ``parser_class`` gets :class:`DelayedArgumentParser`
mixed in (``setup_parser``), and the CLI's own parsers are marked (``init_parser``). jsonargparse
builds the parser of a ``class_path``'s ``init_args`` as an instance of the CLI's parser class,
with ``add_class_arguments(cls)``, and parses them with ``parse_object``. When that parser is a
``DelayedStrategy``'s and refuses, it checks each entry on its own (unknown names against the
signatures; each known one by parsing it alone, so "the right type" is jsonargparse's own
judgement) and records the problems; the CLI's parser, whose ``error`` jsonargparse calls at the
end, reports them instead of the usage. A mistake elsewhere (``model``, ``data``, a plain
``DDPStrategy``) keeps jsonargparse's report, and so does every mistake should jsonargparse stop
building class parsers this way (``tests/strategies/test_cli.py`` would fail). Problems are
checked per source: a config file's are reported before a later command-line override is read.
The key is written ``trainer.strategy`` (where LightningCLI puts a strategy; the class parser does
not know its key). Needs the ``cli`` extra (jsonargparse).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from lightning_delayed.strategies.base import DelayedStrategy
from lightning_delayed.strategies.checks import keyword_annotation, strategy_keywords, unknown_keyword_message

if TYPE_CHECKING:
    from collections.abc import Callable


def _plain(value: Any) -> Any:
    as_dict = getattr(value, "as_dict", None)
    return as_dict() if callable(as_dict) else value


def strategy_refusal(config: Any) -> Exception | None:
    """Rebuild ``trainer.strategy`` from a parsed config; return its construction error, if any.

    Returns ``None`` when the strategy is given by name, when an argument is itself a class to be
    built (a ``comm_hook`` from YAML: rebuilding it here would not be the CLI's construction), or
    when the strategy builds without error.
    """
    trainer: Any = config.get("trainer") if hasattr(config, "get") else None
    strategy: Any = trainer.get("strategy") if hasattr(trainer, "get") else None
    class_path = getattr(strategy, "class_path", None)
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    init_args = _plain(getattr(strategy, "init_args", None)) or {}
    if any(isinstance(v, dict) and "class_path" in v for v in init_args.values()):
        return None
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    try:
        cls(**init_args)
    except (ValueError, TypeError) as error:
        return error
    return None


# Set by DelayedLightningCLI.parse_arguments: the strategy problems found while its parsers parse.
_REPORT: ContextVar[dict[str, None] | None] = ContextVar("_REPORT", default=None)


def strategy_problems(parse: Callable[[dict[str, Any]], object], cls: type, init_args: dict[str, Any]) -> list[str]:
    """Every problem of ``init_args`` for strategy ``cls``, one line each, in the order given.

    ``parse`` is the ``parse_object`` of the parser jsonargparse built for ``cls``: a known name
    is checked by parsing it alone, so a value is refused exactly when jsonargparse would refuse
    it. Empty when each entry parses on its own (the problem is then one of the combination, left
    to jsonargparse). jsonargparse's own entries (``dict_kwargs``, ``__path__``) are not checked.
    """
    try:
        parse({})
    except argparse.ArgumentError:  # the defaults alone do not parse: nothing to pin on one entry
        return []
    accepted = strategy_keywords(cls)
    problems = []
    for name, value in init_args.items():
        if name == "dict_kwargs" or name.startswith("__"):
            continue
        where = f"trainer.strategy.init_args.{name}"
        if name not in accepted:
            problems.append(f"{where}: {unknown_keyword_message(cls, name)}")
            continue
        try:
            parse({name: value})
        except argparse.ArgumentError:
            expected = keyword_annotation(cls, name)
            what = f"expects {expected}" if expected else "refuses the value"
            problems.append(f"{where}: {cls.__name__} {what}, got {_plain(value)!r}")
    return problems


class DelayedArgumentParser(LightningArgumentParser):
    """The parser of :class:`DelayedLightningCLI`: a ``DelayedStrategy``'s ``init_args`` refused all at once.

    jsonargparse builds the parser of a class's ``init_args`` as an instance of the parser class of
    the CLI, by ``add_class_arguments(cls)``, and parses them with ``parse_object``. An instance
    that was given a ``DelayedStrategy`` this way, when the ``init_args`` do not parse, raises one
    ``ArgumentError`` listing every problem (:func:`strategy_problems`) and records them for the
    CLI's parser, whose :meth:`error` reports them first.
    """

    _delayed_strategy: type | None = None
    """The strategy class this parser parses the ``init_args`` of (set by ``add_class_arguments``)."""
    _reports_strategy_problems = False
    """True for the CLI's own parsers (main and subcommands), not those jsonargparse builds for a class."""

    @override
    def add_class_arguments(
        self, class_type: type, nested_key: str | None = None, *args: Any, **kwargs: Any
    ) -> list[str]:
        if nested_key is None and isinstance(class_type, type) and issubclass(class_type, DelayedStrategy):
            self._delayed_strategy = class_type
        added: list[str] = super().add_class_arguments(class_type, nested_key, *args, **kwargs)
        return added

    @override
    def parse_object(self, obj: Any, *args: Any, **kwargs: Any) -> Any:
        cls = self._delayed_strategy
        if cls is None:
            return super().parse_object(obj, *args, **kwargs)
        try:
            return super().parse_object(obj, *args, **kwargs)
        except argparse.ArgumentError as error:
            init_args = _plain(obj)
            problems = strategy_problems(super().parse_object, cls, init_args) if isinstance(init_args, dict) else []
            if not problems:
                raise
            report = _REPORT.get()
            if report is not None:
                report.update(dict.fromkeys(problems))
            raise argparse.ArgumentError(None, "\n".join(problems)) from error

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        report = _REPORT.get()
        if not (self._reports_strategy_problems and report):
            super().error(message, ex)
        text = "\n".join(report)
        if not self.exit_on_error:
            super().error(text, ex)  # raises ArgumentError(text)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"{text}\ntip: For details of accepted options run: {prog} --help\n")
        self.exit(2)


def _with_strategy_checks(parser_class: type[LightningArgumentParser]) -> type[LightningArgumentParser]:
    if issubclass(parser_class, DelayedArgumentParser):
        return parser_class
    return type(f"Delayed{parser_class.__name__}", (DelayedArgumentParser, parser_class), {})


class DelayedLightningCLI(LightningCLI):
    """``LightningCLI`` that reports a refused strategy argument as the first line of the error.

    A drop-in replacement: ``DelayedLightningCLI(MyModel, MyData)`` (see ``examples/cli.py``).
    Unknown names and wrongly typed values in a strategy's ``init_args`` are all reported, one line
    each, before anything else; the command exits with status 2 (``SystemExit``, the lines on
    stderr) or, under ``parser_kwargs={"exit_on_error": False}``, raises ``argparse.ArgumentError``
    with them as its message. A ``parser_class`` of one's own is kept, with
    :class:`DelayedArgumentParser` mixed in. See the module docstring.
    """

    @override
    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        self.parser_class = _with_strategy_checks(self.parser_class)
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)

    @override
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        if isinstance(parser, DelayedArgumentParser):
            parser._reports_strategy_problems = True
        return parser

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        token = _REPORT.set({})
        try:
            super().parse_arguments(parser, args)
        finally:
            _REPORT.reset(token)

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError):
            config = self.config.get(str(self.subcommand)) if self.subcommand is not None else self.config
            refusal = strategy_refusal(config)
            if refusal is None:
                raise
            strategy = config["trainer"]["strategy"]
            # ``from None``: jsonargparse's report (kept as __context__ for a debugger) buries the line.
            message = f"trainer.strategy ({strategy.class_path}): {refusal}"
            try:
                surfaced = type(refusal)(message)
            except Exception:  # an error type whose constructor takes other arguments
                surfaced = ValueError(message)
            raise surfaced from None
