"""Import references: "module:qualname", "module.attr", or an entry-point name in "choreo.callables"."""

from __future__ import annotations

import functools
import importlib
import os
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

from choreo_cli.errors import ChoreoError, did_you_mean

ENTRY_POINT_GROUP = "choreo.callables"

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = rf"{_IDENT}(?:\.{_IDENT})*"
_COLON_FORM = re.compile(rf"({_DOTTED}):({_DOTTED})")
_DOT_FORM = re.compile(rf"({_DOTTED})\.({_IDENT})")
_BARE_FORM = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

Half = Literal["syntax", "module", "import", "attribute", "entry_point"]


class ReferenceResolutionError(ChoreoError):
    """A reference could not be resolved; ``half`` says which part failed.

    ``half`` is "syntax" (not a reference), "module" (no such module), "import" (the
    module raised while being imported: ``location`` is the user's file and line),
    "attribute" (the module has no such attribute) or "entry_point" (no such entry point).
    """

    def __init__(
        self, message: str, *, half: Half, location: tuple[str, int] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.half = half
        self.location = location


@dataclass(frozen=True)
class Reference:
    """A parsed reference: a module and a qualname in it, or an entry-point name."""

    text: str
    module: str | None = None
    qualname: str | None = None
    entry_point: str | None = None


def parse_reference(text: str) -> Reference:
    """Split a reference into its module and qualname (the "module.attr" form splits at the last dot).

    >>> parse_reference("steps:Loader.run")
    Reference(text='steps:Loader.run', module='steps', qualname='Loader.run', entry_point=None)
    >>> parse_reference("pkg.steps.create").module
    'pkg.steps'
    """
    if match := _COLON_FORM.fullmatch(text):
        return Reference(text, module=match.group(1), qualname=match.group(2))
    if match := _DOT_FORM.fullmatch(text):
        return Reference(text, module=match.group(1), qualname=match.group(2))
    if _BARE_FORM.fullmatch(text):
        return Reference(text, entry_point=text)
    raise ReferenceResolutionError(
        f"{text!r} is not a valid reference — write 'module:function', 'module.function' "
        "or an entry-point name",
        half="syntax",
    )


def resolve_reference(text: str) -> Any:
    """Import what a reference names and return it (raises ReferenceResolutionError).

    >>> resolve_reference("os.path:join").__name__
    'join'
    """
    reference = parse_reference(text)
    if reference.entry_point is not None:
        return _load_entry_point(reference.entry_point)
    assert reference.module is not None and reference.qualname is not None
    module = import_module(reference.module, text=text)
    return _walk(module, reference, text=text)


def import_module(name: str, *, text: str) -> ModuleType:
    """Import a module, saying whether it is missing or raised while being imported."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ReferenceResolutionError(
                f"cannot import {text!r}: no module named '{exc.name}' — check the spelling, "
                "and that its directory is in python_path",
                half="module",
            ) from None
        raise _raised_inside(name, exc, text=text) from None
    except (Exception, SystemExit) as exc:
        raise _raised_inside(name, exc, text=text) from None


def _raised_inside(name: str, exc: BaseException, *, text: str) -> ReferenceResolutionError:
    location = user_location(exc)
    where = f" ({location[0]}:{location[1]})" if location else ""
    detail = exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc)
    return ReferenceResolutionError(
        f"cannot import {text!r}: importing module '{name}' raised "
        f"{type(exc).__name__}: {detail}{where}",
        half="import",
        location=location,
    )


def _walk(module: ModuleType, reference: Reference, *, text: str) -> Any:
    obj: Any = module
    owner = reference.module
    assert reference.qualname is not None
    for part in reference.qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            submodule = _submodule(obj, part, text=text)
            if submodule is None:
                raise ReferenceResolutionError(
                    f"cannot import {text!r}: '{owner}' has no attribute '{part}'"
                    + _suggest(part, obj),
                    half="attribute",
                ) from None
            obj = submodule
        except Exception as exc:
            raise ReferenceResolutionError(
                f"cannot import {text!r}: reading '{part}' of '{owner}' raised "
                f"{type(exc).__name__}: {exc}",
                half="attribute",
            ) from None
        owner = f"{owner}:{part}" if owner == reference.module else f"{owner}.{part}"
    return obj


def _submodule(obj: Any, part: str, *, text: str) -> ModuleType | None:
    """A submodule that its package does not import itself (``pkg:sub.func``)."""
    if not isinstance(obj, ModuleType) or not hasattr(obj, "__path__"):
        return None
    from importlib.util import find_spec

    name = f"{obj.__name__}.{part}"
    if find_spec(name) is None:
        return None
    return import_module(name, text=text)


def _suggest(part: str, obj: Any) -> str:
    names = [n for n in dir(obj) if not n.startswith("_") or part.startswith("_")]
    hint = did_you_mean(part, names, n=3)
    if hint:
        return hint
    if isinstance(obj, ModuleType):
        defined = [
            n
            for n in names
            if callable(getattr(obj, n, None))
            and getattr(getattr(obj, n, None), "__module__", None) == obj.__name__
        ]
        if defined:
            return " — it defines: " + ", ".join(defined[:8])
    return ""


def _load_entry_point(name: str) -> Any:
    from importlib.metadata import entry_points

    found = entry_points(group=ENTRY_POINT_GROUP)
    matches = [ep for ep in found if ep.name == name]
    if not matches:
        hint = did_you_mean(name, sorted(ep.name for ep in found)) or (
            " — write 'module:function' for a callable in your own code, or install "
            "the package that provides it"
        )
        raise ReferenceResolutionError(
            f"no entry point named '{name}' in group '{ENTRY_POINT_GROUP}'{hint}",
            half="entry_point",
        )
    target = matches[0].value.replace(" ", "")
    try:
        return resolve_reference(target)
    except ReferenceResolutionError as exc:
        raise ReferenceResolutionError(
            f"entry point '{name}' (= '{target}'): {exc.message}",
            half=exc.half,
            location=exc.location,
        ) from None


def user_location(exc: BaseException) -> tuple[str, int] | None:
    """The user's file and line where an exception came from (not importlib's or a library's)."""
    import traceback

    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return display_path(exc.filename), exc.lineno
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<") and frame.filename != __file__
    ]
    library = library_dirs()
    own = [f for f in frames if not f.filename.startswith(library)]
    chosen = (own or frames)[-1:]
    if not chosen or chosen[0].lineno is None:
        return None
    return display_path(chosen[0].filename), chosen[0].lineno


def display_path(filename: str) -> str:
    """A path as people read it: relative to the working directory when it is inside it."""
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive on Windows
        return filename
    return filename if relative.startswith("..") else relative


@functools.lru_cache(maxsize=1)
def library_dirs() -> tuple[str, ...]:
    """The folders of the standard library and installed packages (each ending in a separator)."""
    import sysconfig

    paths = sysconfig.get_paths()
    keys = ("stdlib", "platstdlib", "purelib", "platlib")
    return tuple(
        dict.fromkeys(os.path.join(os.path.abspath(paths[k]), "") for k in keys if k in paths)
    )
