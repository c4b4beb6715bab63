"""How every choreo command reads to people: plain help, and usage errors in choreo's words.

typer's help shows its types (``{PIPELINE}``, ``PIPELINE <path>``, ``--workers <int
range>``, ``<list[str]>``) and its usage errors are pydantic's and click's ("Invalid value
for '--workers' / '-w': Input should be greater than or equal to 1", "Value error, ...",
and the usage block above them). The command classes here, given to typer once for the
application and each command (``cls=``), write plain metavars (``PIPELINE``, ``--workers
N``, ``--executor [thread|process|dask]``, ``PATH...``) and turn every usage error, of the
group or of a command, into one ``error: <message>`` line on stderr (exit 2) that names
the option and points at the command's ``--help``. (typer carries its own copy of click,
``typer._click``: the exceptions and contexts here are that copy's.)

A plain `choreo run` command line is read without typer (run_options.read_plain_run_args),
but only when every value is plainly valid: a bad one is always left to typer, so it gets
the words written here whichever way the command line came in.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import re
from collections.abc import Iterator, Sequence
from typing import Any

from typer import _click
from typer._click import exceptions as click_errors
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

# -h as well as --help, on `choreo` and on every command (no command uses -h for
# anything else).
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


# -- help -----------------------------------------------------------------------------------


def value_metavar(param: TyperOption | TyperArgument) -> str:
    """The word standing for an option's value (or an argument) in help: its metavar,
    else ``[a|b]`` for a choice, ``N`` for a whole number, ``NUMBER``, ``PATH``, or the
    parameter's name in capitals."""
    if param.metavar:
        return param.metavar
    descriptor = param.type_descriptor
    if descriptor.is_choice:
        return f"[{'|'.join(_choice_words(param))}]"
    if isinstance(param, TyperArgument):
        return (param.name or "ARG").upper()
    annotation = descriptor.annotation
    if annotation is int:
        return "N"
    if annotation is float:
        return "NUMBER"
    if descriptor.is_path:
        return "PATH"
    return (param.name or "VALUE").upper()


def _choice_words(param: TyperOption | TyperArgument) -> list[str]:
    return [
        str(choice.value) if isinstance(choice, enum.Enum) else str(choice)
        for choice in param.type_descriptor.choices or ()
    ]


def _argument_name(param: TyperArgument) -> str:
    return value_metavar(param) + ("..." if param.nargs != 1 else "")


def _argument_usage(param: TyperArgument) -> str:
    """An argument on the usage line: ``PIPELINE``, ``PATH...``, ``[DIR]``, ``[PATH]...``."""
    name = value_metavar(param)
    if not param.required:
        name = f"[{name}]"
    return name + ("..." if param.nargs != 1 else "")


def _range_words(param: TyperOption | TyperArgument) -> tuple[str, str] | None:
    """typer's range note (``1<=x<=4096``) and the same in words (``from 1 to 4096``)."""
    low, high = param.min, param.max
    if low is not None and high is not None:
        return f"{low}<=x<={high}", f"from {low} to {high}"
    if low is not None:
        return f"x>={low}", f"at least {low}"
    if high is not None:
        return f"x<={high}", f"at most {high}"
    return None


def _help_record(param: _click.Parameter, ctx: _click.Context) -> tuple[str, str] | None:
    """One line of the Arguments or Options list, with plain metavars and ranges."""
    record = param.get_help_record(ctx)
    if record is None or not isinstance(param, (TyperOption, TyperArgument)):
        return record
    text = record[1]
    words = _range_words(param)
    if words is not None:
        typer_note, plain = words
        text = text.replace(f"; {typer_note}]", f"; {plain}]").replace(
            f"[{typer_note}]", f"[{plain}]"
        )
    if isinstance(param, TyperArgument):
        return _argument_name(param), text

    def names(opts: Sequence[str]) -> str:
        written = _click.formatting.join_options(opts)[0]
        if not param.is_flag and not param.count:
            written += " " + value_metavar(param) + ("..." if param.nargs != 1 else "")
        return written

    shown = [names(param.opts)]
    if param.secondary_opts:
        shown.append(names(param.secondary_opts))
    return " / ".join(shown), text


def _format_params(
    command: _click.Command, ctx: _click.Context, formatter: _click.HelpFormatter
) -> None:
    arguments: list[tuple[str, str]] = []
    options: list[tuple[str, str]] = []
    for param in command.get_params(ctx):
        record = _help_record(param, ctx)
        if record is not None:
            (arguments if param.param_type_name == "argument" else options).append(record)
    if arguments:
        with formatter.section("Arguments"):
            formatter.write_dl(arguments)
    if options:
        with formatter.section("Options"):
            formatter.write_dl(options)


def _format_epilog(
    command: _click.Command, ctx: _click.Context, formatter: _click.HelpFormatter
) -> None:
    """The epilog (the command's "Examples:") as a section of its own, as "Options:" is:
    not indented as a paragraph of the description."""
    if command.epilog:
        formatter.write_paragraph()
        formatter.write_text(inspect.cleandoc(command.epilog))


def _usage_pieces(command: _click.Command, ctx: _click.Context) -> list[str]:
    pieces = [command.options_metavar] if command.options_metavar else []
    for param in command.get_params(ctx):
        if isinstance(param, TyperArgument):
            pieces.append(_argument_usage(param))
        else:
            pieces.extend(param.get_usage_pieces(ctx))
    return pieces


class ChoreoCommand(TyperCommand):
    """A choreo command: typer's, with plain metavars in its help (its usage errors are
    reworded by ChoreoGroup)."""

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        with _with_context(ctx):
            return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: _click.Context) -> list[str]:
        return _usage_pieces(self, ctx)

    def format_options(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        _format_params(self, ctx, formatter)

    def format_epilog(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        _format_epilog(self, ctx, formatter)


class ChoreoGroup(TyperGroup):
    """The ``choreo`` command: typer's group, with plain help, and every usage error of
    the group or of one of its commands said in choreo's words (``UsageInWords``)."""

    def collect_usage_pieces(self, ctx: _click.Context) -> list[str]:
        return [*_usage_pieces(self, ctx), self.subcommand_metavar]

    def format_options(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        _format_params(self, ctx, formatter)
        self.format_commands(ctx, formatter)

    def format_epilog(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        _format_epilog(self, ctx, formatter)

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        with _with_context(ctx):
            return super().parse_args(ctx, args)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: _click.Context | None = None,
        **extra: Any,
    ) -> _click.Context:
        with _in_choreo_words():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: _click.Context) -> Any:
        with _in_choreo_words():
            return super().invoke(ctx)


# -- usage errors ---------------------------------------------------------------------------


class UsageInWords(click_errors.UsageError):
    """A usage error said as choreo says its errors: ``error: <message> — see choreo
    run --help`` on one line of stderr; exit 2 (``exit_code``)."""

    def show(self, file: Any = None) -> None:
        from choreo_cli.cli.console import build_console
        from choreo_cli.cli.streams import Streams

        # The streams the console script handed to typer (app(obj=streams)), as the
        # commands' own messages use.
        given = None if self.ctx is None else self.ctx.obj
        streams = given if isinstance(given, Streams) else Streams.for_process()
        build_console(streams).error(self.format_message())

    def format_message(self) -> str:
        if self.ctx is None:
            return self.message
        names = self.ctx.help_option_names
        help_option = "--help" if "--help" in names else names[0]
        return f"{self.message} — see {self.ctx.command_path} {help_option}"


@contextlib.contextmanager
def _with_context(ctx: _click.Context) -> Iterator[None]:
    """Give a usage error raised without a context (click's parser: "Option '-i' requires
    an argument") the command's, for the help to point at."""
    try:
        yield
    except click_errors.UsageError as error:
        if error.ctx is None:
            error.ctx, error.cmd = ctx, ctx.command
        raise


@contextlib.contextmanager
def _in_choreo_words() -> Iterator[None]:
    """Re-raise a click usage error (not the help shown for no arguments) as UsageInWords."""
    try:
        yield
    except (UsageInWords, click_errors.NoArgsIsHelpError):
        raise
    except click_errors.UsageError as error:
        raise UsageInWords(choreo_message(error), error.ctx) from error


def choreo_message(error: click_errors.UsageError) -> str:
    """What ``error`` says, in choreo's words: names the option, no pydantic or click terms.

    >>> choreo_message(click_errors.UsageError("No such command 'rn'. Did you mean 'run'?"))
    "no such command 'rn' (did you mean 'run'?)"
    """
    if isinstance(error, click_errors.NoSuchOption):
        return _no_such_option(error)
    if isinstance(error, click_errors.MissingParameter):
        return _missing(error)
    if isinstance(error, click_errors.BadParameter) and error.param is not None:
        return _bad_value(error, error.param)
    if isinstance(error, click_errors.BadOptionUsage):
        return _bad_option_usage(error)
    extra = _EXTRA_ARGUMENTS.fullmatch(error.message)
    if extra is not None:
        return _extra_arguments(error.ctx, extra.group(1))
    return _plain(error.message)


def _command(ctx: _click.Context | None) -> str:
    return "choreo" if ctx is None else ctx.command_path


def _option_name(param: _click.Parameter) -> str:
    """How a message names a parameter: its long option (``--workers``), else its metavar."""
    if param.param_type_name == "option":
        long_names = [name for name in param.opts if name.startswith("--")]
        return (long_names or param.opts)[0]
    if isinstance(param, (TyperOption, TyperArgument)):
        return value_metavar(param)
    return (param.name or "argument").upper()


def _no_such_option(error: click_errors.NoSuchOption) -> str:
    message = f"{_command(error.ctx)} has no option {error.option_name}"
    possible = sorted(error.possibilities or ())
    if len(possible) == 1:
        return f"{message} (did you mean {possible[0]}?)"
    if possible:
        return f"{message} (did you mean one of {', '.join(possible)}?)"
    return message


def _missing(error: click_errors.MissingParameter) -> str:
    param = error.param
    if param is None:
        return _plain(error.message or "a required argument is missing")
    name = _option_name(param)
    if isinstance(param, (TyperOption, TyperArgument)) and param.param_type_name == "option":
        name = f"{name} {value_metavar(param)}"
    what = getattr(param, "help", None)
    said = f" ({_plain(what).rstrip('.')})" if what else ""
    many = "at least one " if param.nargs != 1 else ""
    return f"{_command(error.ctx)} needs {many}{name}{said}"


def _bad_value(error: click_errors.BadParameter, param: _click.Parameter) -> str:
    name = _option_name(param)
    given = _given_value(error)
    not_given = "" if given is None else f", not {given!r}"
    if isinstance(param, (TyperOption, TyperArgument)):
        descriptor = param.type_descriptor
        if descriptor.is_choice:
            return f"{name} must be one of {', '.join(_choice_words(param))}{not_given}"
        if descriptor.annotation in (int, float):
            kind = "a whole number" if descriptor.annotation is int else "a number"
            words = _range_words(param)
            if words is not None:
                low, high = param.min, param.max
                bound = words[1] if low is not None and high is not None else f"of {words[1]}"
                kind = f"{kind} {bound}"
            return f"{name} must be {kind}{not_given}"
    # A message of choreo's own (a callback's): only the option to say.
    return f"{name}: {_plain(error.message)}"


def _given_value(error: click_errors.BadParameter) -> str | None:
    """The value that was refused, as written: pydantic's error (typer's check, the cause
    of ``error``) keeps it; None when unknown."""
    cause = error.__cause__
    errors = getattr(cause, "errors", None)
    if not callable(errors):
        return None
    try:
        found = errors()
        value = found[0]["input"] if found else None
    except (LookupError, TypeError, ValueError):
        return None
    if value is None or isinstance(value, (list, tuple, dict)):
        return None
    return str(value.value if isinstance(value, enum.Enum) else value)


_TAKES_NO_VALUE = re.compile(r"Option '(.*)' does not take a value\.")
_REQUIRES = re.compile(r"Option '(.*)' requires (an argument|\d+ arguments)\.")


def _bad_option_usage(error: click_errors.BadOptionUsage) -> str:
    name = error.option_name
    if _TAKES_NO_VALUE.fullmatch(error.message):
        return f"{name} takes no value"
    if _REQUIRES.fullmatch(error.message):
        metavar = _metavar_of(error.ctx, name)
        return f"{name} needs a value" + (f" ({name} {metavar})" if metavar else "")
    return _plain(error.message)


_EXTRA_ARGUMENTS = re.compile(r"Got unexpected extra arguments? ?(?:\(s\))? \((.*)\)")


def _extra_arguments(ctx: _click.Context | None, extra: str) -> str:
    """``too many arguments: b (choreo run takes PIPELINE)``."""
    if ctx is None:
        return f"too many arguments: {extra}"
    takes = [_argument_usage(p) for p in ctx.command.params if isinstance(p, TyperArgument)]
    said = " ".join(takes) if takes else "no arguments"
    return f"too many arguments: {extra} ({ctx.command_path} takes {said})"


def _metavar_of(ctx: _click.Context | None, option: str) -> str | None:
    if ctx is None:
        return None
    for param in ctx.command.params:
        if isinstance(param, TyperOption) and option in (*param.opts, *param.secondary_opts):
            return value_metavar(param)
    return None


_REWORDED: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"No such command '(.*)'\. Did you mean (.*)\?"),
        r"no such command '\1' (did you mean \2?)",
    ),
    (re.compile(r"No such command '(.*)'\."), r"no such command '\1'"),
    (re.compile(r"Missing command\."), "a command is missing (run, validate, test, ...)"),
)


def _plain(message: str) -> str:
    """A message of click's or pydantic's without their terms: reworded when known, else
    without "Value error, " and with a small first letter (as choreo's messages)."""
    for pattern, words in _REWORDED:
        if pattern.fullmatch(message):
            return pattern.sub(words, message)
    message = message.removeprefix("Value error, ").strip()
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    return message
