"""Shared objects for steps (``ctx.resources``): built once per pipeline or per worker, closed at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from choreo_cli.errors import ResourceError

Scope = Literal["pipeline", "worker"]


@dataclasses.dataclass(frozen=True)
class ResourceSpec:
    """How to build a resource: ``factory(**kwargs)``; a context manager or generator is entered.

    >>> import sqlite3
    >>> spec = ResourceSpec("db", sqlite3.connect, {"database": ":memory:"}, "worker")
    """

    name: str
    factory: Callable[..., Any]
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    scope: Scope = "pipeline"
    factory_name: str | None = None


class _Built:
    """Resources built in one scope, torn down in reverse order of building."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        # One exit stack per resource, so a failing teardown can say which resource it was.
        self.stacks: list[tuple[str, contextlib.ExitStack]] = []

    def build(self, spec: ResourceSpec) -> Any:
        label = spec.factory_name or getattr(spec.factory, "__qualname__", repr(spec.factory))
        stack = contextlib.ExitStack()
        try:
            obj = spec.factory(**spec.kwargs)
            if inspect.isgenerator(obj):
                obj = stack.enter_context(_generator_cm(obj))
            elif hasattr(obj, "__enter__") and hasattr(obj, "__exit__"):
                obj = stack.enter_context(obj)
        except Exception as exc:
            raise ResourceError(
                f"resource {spec.name!r}: factory {label} raised {type(exc).__name__}: {exc}"
            ) from exc
        self.stacks.append((spec.name, stack))
        self.values[spec.name] = obj
        return obj

    def close(self) -> list[BaseException]:
        errors: list[BaseException] = []
        stacks, self.stacks = self.stacks, []
        for name, stack in reversed(stacks):
            try:
                stack.close()
            except Exception as exc:
                error = ResourceError(
                    f"resource {name!r}: teardown raised {type(exc).__name__}: {exc}"
                )
                error.__cause__ = exc
                errors.append(error)
        return errors


@contextlib.contextmanager
def _generator_cm(gen: Any) -> Iterator[Any]:
    value = next(gen)
    try:
        yield value
    finally:
        with contextlib.suppress(StopIteration):
            next(gen)


class ResourcePool:
    """All resources of one coordinator: given objects, pipeline-scoped and worker-scoped specs."""

    def __init__(self, resources: Mapping[str, Any] | None = None) -> None:
        self._given: dict[str, Any] = {}
        self._specs: dict[str, ResourceSpec] = {}
        for name, value in (resources or {}).items():
            if isinstance(value, ResourceSpec):
                self._specs[name] = value
            else:
                self._given[name] = value
        self._shared = _Built()
        self._workers: list[_Built] = []
        self._lock = threading.Lock()
        self._opened = False

    @property
    def names(self) -> list[str]:
        """Every resource name, given or built."""
        return [*self._given, *self._specs]

    def open(self) -> None:
        """Build the pipeline-scoped resources (once)."""
        with self._lock:
            if self._opened:
                return
            self._opened = True
            try:
                for spec in self._specs.values():
                    if spec.scope == "pipeline":
                        self._shared.build(spec)
            except BaseException:
                # Nobody will call close() after a failed ``with`` entry: undo what was built.
                built, self._shared, self._opened = self._shared, _Built(), False
                built.close()
                raise

    def view(self) -> Resources:
        """A worker's view: worker-scoped resources are built on first use in that worker."""
        built = _Built()
        with self._lock:
            self._workers.append(built)
        return Resources(self, built)

    def build_worker(self, local: _Built) -> None:
        """Build every worker-scoped resource of one worker now (so a failing factory is
        reported before the first record, not inside it)."""
        for spec in self._specs.values():
            if spec.scope == "worker" and spec.name not in local.values:
                local.build(spec)

    def get(self, name: str, local: _Built) -> Any:
        if name in self._given:
            return self._given[name]
        spec = self._specs.get(name)
        if spec is None:
            known = ", ".join(sorted(self.names)) or "none"
            raise KeyError(f"no resource named {name!r} (resources: {known})")
        if spec.scope == "worker":
            if name in local.values:
                return local.values[name]
            return local.build(spec)
        if not self._opened:
            self.open()
        return self._shared.values[name]

    def close_worker(self, built: _Built) -> list[BaseException]:
        """Tear down one worker's resources (called from the worker's own thread)."""
        with self._lock:
            if built in self._workers:
                self._workers.remove(built)
        return built.close()

    def detach_worker(self, built: _Built) -> None:
        """Leave one worker's resources to it: ``close`` will not tear them down (its thread
        was abandoned with a call still running, which may use them; see watchdog.py)."""
        with self._lock:
            if built in self._workers:
                self._workers.remove(built)

    def close(self) -> list[BaseException]:
        """Tear down every resource in reverse order; return the teardowns' errors."""
        errors: list[BaseException] = []
        with self._lock:
            workers, self._workers = self._workers, []
        for built in reversed(workers):
            errors.extend(built.close())
        errors.extend(self._shared.close())
        self._shared = _Built()
        self._opened = False
        for name, value in reversed(list(self._given.items())):
            close = getattr(value, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as exc:
                    errors.append(ResourceError(f"resource {name!r}: close() raised {exc!r}"))
        return errors


def teardown_error(errors: list[BaseException]) -> ResourceError:
    """One ResourceError for the teardown errors of a coordinator (which name their resource)."""
    if len(errors) == 1 and isinstance(errors[0], ResourceError):
        return errors[0]
    messages = "; ".join(
        str(e) if isinstance(e, ResourceError) else f"{type(e).__name__}: {e}" for e in errors
    )
    error = ResourceError(f"resource teardown failed: {messages}")
    error.__cause__ = errors[0]
    return error


class Resources:
    """``ctx.resources``: ``ctx.resources.db`` or ``ctx.resources["db"]``."""

    __slots__ = ("_local", "_pool")

    def __init__(self, pool: ResourcePool, local: _Built) -> None:
        self._pool = pool
        self._local = local

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._pool.get(name, self._local)
        except KeyError as exc:
            raise AttributeError(exc.args[0]) from None

    def __getitem__(self, name: str) -> Any:
        return self._pool.get(name, self._local)

    def __contains__(self, name: object) -> bool:
        return name in self._pool.names

    def __iter__(self) -> Iterator[str]:
        return iter(self._pool.names)

    def __repr__(self) -> str:
        return f"Resources({', '.join(self._pool.names)})"
