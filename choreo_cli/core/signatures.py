"""Step callables: signature checks at add_step time and record-type adapters."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any

from choreo_cli.errors import StepDefinitionError, did_you_mean

_P = inspect.Parameter
_POSITIONAL = (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)
_JSON_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


class Mismatch(Exception):
    """A record does not fit a declared parameter type; the text says why."""


Adapter = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class CallSpec:
    """Everything about a step callable that does not depend on the record.

    ``fn`` already has the ``with:`` keywords bound; ``adapter`` converts the record to the
    declared parameter type (None: the raw value is passed).
    """

    fn: Callable[..., Any]
    name: str
    takes_record: bool
    is_async: bool
    adapter: Adapter | None
    annotation: str
    check: type | None = None  # set when the adapter is a plain isinstance check


def callable_name(fn: Any) -> str:
    """A readable ``module:qualname`` for a callable (or its repr)."""
    target = fn.func if isinstance(fn, functools.partial) else fn
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None) or getattr(type(target), "__qualname__", None)
    if module and qualname:
        return f"{module}:{qualname}"
    return repr(fn)


def inspect_callable(
    fn: Any,
    *,
    step: str,
    phase: str,
    name: str | None = None,
    with_keys: Collection[str] = (),
    kwargs: Mapping[str, Any] | None = None,
) -> CallSpec:
    """Check a step callable's signature and work out how to call it.

    >>> def create(ctx, record): ...
    >>> inspect_callable(create, step="create", phase="job").takes_record
    True
    """
    display = name or callable_name(fn)

    def fail(reason: str, key: str | None = None) -> StepDefinitionError:
        return StepDefinitionError(reason, step=step, phase=phase, callable_name=display, key=key)

    if not callable(fn):
        raise fail(f"is not callable (it is a {type(fn).__name__})")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise fail(f"its signature cannot be read ({exc}); wrap it in a def") from None
    params = list(signature.parameters.values())
    keys = list(kwargs.keys()) if kwargs is not None else list(with_keys)
    by_name = {p.name: p for p in params if p.kind is not _P.POSITIONAL_ONLY}
    var_kw = any(p.kind is _P.VAR_KEYWORD for p in params)
    var_pos = any(p.kind is _P.VAR_POSITIONAL for p in params)

    for key in keys:
        param = by_name.get(key)
        if param is None or param.kind in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD):
            if var_kw:
                continue
            accepted = [
                p.name for p in params if p.kind in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)
            ]
            hint = did_you_mean(key, accepted)
            raise fail(f"does not accept the keyword argument {key!r} given in with:{hint}", key)
    for param in params:
        if param.kind is _P.KEYWORD_ONLY and param.default is _P.empty and param.name not in keys:
            raise fail(
                f"requires the keyword argument {param.name!r}: add it under the step's with:",
                param.name,
            )

    positional = [p for p in params if p.kind in _POSITIONAL and p.name not in keys]
    if not positional and not var_pos:
        raise fail("takes no ctx parameter: write it as f(ctx) or f(ctx, record)")
    required = [p for p in positional if p.default is _P.empty]
    if len(required) > 2:
        extra = ", ".join(p.name for p in required[2:])
        raise fail(
            f"needs more positional parameters than ctx, record (also {extra}): "
            "give them defaults, make them keyword-only, or set them under with:"
        )
    takes_record = len(positional) >= 2 or var_pos

    adapter: Adapter | None = None
    annotation = "Any"
    if takes_record and len(positional) >= 2:
        declared = _declared_type(fn, positional[1])
        adapter = _shared_adapter(declared)
        annotation = annotation_text(declared)

    bound = functools.partial(fn, **kwargs) if kwargs else fn
    return CallSpec(
        fn=bound,
        name=display,
        takes_record=takes_record,
        is_async=_is_async(fn),
        adapter=adapter,
        annotation=annotation,
        check=_ISINSTANCE_ONLY.get(adapter) if adapter is not None else None,
    )


def _is_async(fn: Any) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - callable objects
    return call is not None and inspect.iscoroutinefunction(call)


def _declared_type(fn: Any, param: inspect.Parameter) -> Any:
    annotation = param.annotation
    if annotation is _P.empty:
        return Any
    if isinstance(annotation, str):
        target = fn.func if isinstance(fn, functools.partial) else fn
        target = (
            target
            if inspect.isfunction(target) or inspect.ismethod(target)
            else type(target).__call__
        )
        # Evaluate the record's annotation alone: get_type_hints(target) would fail on
        # another parameter's name imported under TYPE_CHECKING (``ctx: Context``).
        namespace = getattr(inspect.unwrap(target), "__globals__", {})
        try:
            return eval(annotation, namespace)  # what get_type_hints does for one name
        except Exception:  # an unresolvable string annotation is passed the raw value
            return annotation
    return annotation


def annotation_text(tp: Any) -> str:
    """How a declared type reads in messages."""
    if tp is Any:
        return "Any"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__qualname__
    return str(tp).replace("typing.", "")


def json_type_name(value: Any) -> str:
    """The JSON name of a record value's type (``object``, ``array``...), or its Python type."""
    return _JSON_NAMES.get(type(value), type(value).__name__)


_ADAPTERS: dict[Any, Adapter | None] = {}


def _shared_adapter(tp: Any) -> Adapter | None:
    # One adapter object per declared type, so a record converted for one step is reused
    # by every later step that declares the same type (conversion once per record and type).
    try:
        return _ADAPTERS[tp]
    except KeyError:
        adapter = _ADAPTERS[tp] = build_adapter(tp)
        return adapter
    except TypeError:  # an unhashable annotation
        return build_adapter(tp)


def build_adapter(tp: Any) -> Adapter | None:
    """Return a converter for a declared record type, or None for "pass the raw value"."""
    if tp is Any or tp is object or isinstance(tp, str):
        return None
    origin = typing.get_origin(tp)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        members = [m for m in typing.get_args(tp) if m is not type(None)]
        if len(members) == 1:
            # Shared with the bare type, so X and Optional[X] convert a record once.
            return _shared_adapter(members[0])
        return _union_adapter(members)
    if origin is dict or origin is list:  # dict[...] / list[...]: the outer type only
        return _shared_adapter(origin)
    if origin is not None:  # tuple[...], Sequence[...], Literal[...]...: raw, unchecked
        return None
    if tp in (dict, list, str):
        return _isinstance_adapter(tp)
    if tp is bool:
        return _exact_adapter(bool)
    if tp is int:
        return _int_adapter
    if tp is float:
        return _float_adapter
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_adapter(tp)
    validate = getattr(tp, "model_validate", None)
    if isinstance(tp, type) and callable(validate):
        return _model_adapter(validate)
    return None


_ISINSTANCE_ONLY: dict[Adapter, type] = {}


def _isinstance_adapter(cls: type) -> Adapter:
    def adapt(value: Any) -> Any:
        if value is None or isinstance(value, cls):
            return value
        raise Mismatch(f"a JSON {json_type_name(value)} is not a {cls.__name__}")

    # The hot loop may run this check inline instead of calling the adapter.
    _ISINSTANCE_ONLY[adapt] = cls
    return adapt


def _exact_adapter(cls: type) -> Adapter:
    def adapt(value: Any) -> Any:
        if value is None or type(value) is cls:
            return value
        raise Mismatch(f"a JSON {json_type_name(value)} is not a {cls.__name__}")

    return adapt


def _int_adapter(value: Any) -> Any:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise Mismatch(f"a JSON {json_type_name(value)} is not an int")


def _float_adapter(value: Any) -> Any:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise Mismatch(f"a JSON {json_type_name(value)} is not a float")


def _dataclass_adapter(cls: type) -> Adapter:
    def adapt(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise Mismatch(f"a JSON {json_type_name(value)} cannot build a {cls.__qualname__}")
        try:
            return cls(**value)
        except TypeError as exc:  # missing or unknown fields
            raise Mismatch(str(exc)) from None
        except Exception as exc:  # __post_init__ refused the record: still a mismatch
            raise Mismatch(f"{type(exc).__name__}: {exc}") from None

    return adapt


def _model_adapter(validate: Callable[[Any], Any]) -> Adapter:
    def adapt(value: Any) -> Any:
        if value is None:
            return None
        try:
            return validate(value)
        except Exception as exc:
            raise Mismatch(f"{type(exc).__name__}: {exc}") from None

    return adapt


def _union_adapter(members: list[Any]) -> Adapter:
    adapters = [build_adapter(m) for m in members]

    def adapt(value: Any) -> Any:
        if value is None:
            return None
        for member_adapter in adapters:
            if member_adapter is None:
                return value
            try:
                return member_adapter(value)
            except Mismatch:
                continue
        raise Mismatch(f"a JSON {json_type_name(value)} fits no member of the union")

    return adapt
