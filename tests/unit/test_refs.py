"""Reference resolution: which half failed, and where."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from choreo_cli.pipeline import refs
from choreo_cli.pipeline.refs import ReferenceResolutionError, parse_reference, resolve_reference

MakeModule = Callable[[str, str], Path]

STEPS = """\
def create(ctx, record):
    return record

class Loader:
    def run(self, ctx):
        return 1

    class Inner:
        @staticmethod
        def deep(ctx):
            return 2

value = 3
"""


@pytest.mark.parametrize(
    ("text", "module", "qualname", "entry_point"),
    [
        ("steps:create", "steps", "create", None),
        ("pkg.steps:Loader.run", "pkg.steps", "Loader.run", None),
        ("steps.create", "steps", "create", None),
        ("pkg.sub.steps.create", "pkg.sub.steps", "create", None),
        ("greet", None, None, "greet"),
        ("greet-all", None, None, "greet-all"),
    ],
)
def test_parse_reference(
    text: str, module: str | None, qualname: str | None, entry_point: str | None
) -> None:
    reference = parse_reference(text)
    assert (reference.module, reference.qualname, reference.entry_point) == (
        module,
        qualname,
        entry_point,
    )


@pytest.mark.parametrize(
    "text", ["", "steps:", ":f", "a b", "steps::f", "1steps:f", "steps:f.", "a/b"]
)
def test_a_malformed_reference_is_a_syntax_error(text: str) -> None:
    with pytest.raises(ReferenceResolutionError) as info:
        parse_reference(text)
    assert info.value.half == "syntax"
    assert info.value.message == (
        f"{text!r} is not a valid reference — write 'module:function', 'module.function' "
        "or an entry-point name"
    )


def test_resolves_both_forms_and_class_attributes(make_module: MakeModule) -> None:
    make_module("refs_steps", STEPS)
    module = __import__("refs_steps")
    assert resolve_reference("refs_steps:create") is module.create
    assert resolve_reference("refs_steps.create") is module.create
    assert resolve_reference("refs_steps:Loader.run") is module.Loader.run
    assert resolve_reference("refs_steps:Loader.Inner.deep")(None) == 2
    assert resolve_reference("refs_steps:value") == 3


def test_resolves_a_submodule_its_package_does_not_import(make_module: MakeModule) -> None:
    make_module("refs_pkg.tasks", "def run(ctx):\n    return 'ok'\n")
    assert resolve_reference("refs_pkg:tasks.run")(None) == "ok"
    assert resolve_reference("refs_pkg.tasks:run")(None) == "ok"


def test_a_missing_module_is_the_module_half(make_module: MakeModule) -> None:
    with pytest.raises(ReferenceResolutionError) as info:
        resolve_reference("refs_nowhere:create")
    assert info.value.half == "module"
    assert info.value.message == (
        "cannot import 'refs_nowhere:create': no module named 'refs_nowhere' — "
        "check the spelling, and that its directory is in python_path"
    )


def test_a_missing_parent_package_is_the_module_half() -> None:
    with pytest.raises(ReferenceResolutionError) as info:
        resolve_reference("refs_nopkg.steps.create")
    assert info.value.half == "module"
    assert "no module named 'refs_nopkg'" in info.value.message


def test_an_import_error_inside_the_module_names_the_users_file_and_line(
    make_module: MakeModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_module("refs_broken", "import os\n\nimport refs_not_installed_dependency\n")
    monkeypatch.chdir(path.parent)
    with pytest.raises(ReferenceResolutionError) as info:
        resolve_reference("refs_broken:create")
    assert info.value.half == "import"
    assert info.value.location == ("refs_broken.py", 3)
    assert info.value.message == (
        "cannot import 'refs_broken:create': importing module 'refs_broken' raised "
        "ModuleNotFoundError: No module named 'refs_not_installed_dependency' (refs_broken.py:3)"
    )


def test_a_syntax_error_inside_the_module_names_the_users_file_and_line(
    make_module: MakeModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_module("refs_syntax", "def create(ctx):\n    return (\n")
    monkeypatch.chdir(path.parent)
    with pytest.raises(ReferenceResolutionError) as info:
        resolve_reference("refs_syntax:create")
    assert info.value.half == "import"
    assert info.value.message == (
        "cannot import 'refs_syntax:create': importing module 'refs_syntax' raised "
        "SyntaxError: '(' was never closed (refs_syntax.py:2)"
    )


def test_any_exception_while_importing_is_reported(
    make_module: MakeModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_module("refs_raises", "x = 1\nraise RuntimeError('no config')\n")
    monkeypatch.chdir(path.parent)
    with pytest.raises(ReferenceResolutionError) as info:
        resolve_reference("refs_raises.create")
    assert info.value.message.endswith("raised RuntimeError: no config (refs_raises.py:2)")


def test_a_missing_attribute_suggests_close_names(make_module: MakeModule) -> None:
    make_module("refs_steps", STEPS)
    with pytest.raises(ReferenceResolutionError) as info:
        resolve_reference("refs_steps:creat")
    assert info.value.half == "attribute"
    assert info.value.message == (
        "cannot import 'refs_steps:creat': 'refs_steps' has no attribute 'creat' — "
        "did you mean 'create'?"
    )


def test_a_missing_class_attribute_names_the_class(make_module: MakeModule) -> None:
    make_module("refs_steps", STEPS)
    with pytest.raises(ReferenceResolutionError) as info:
        resolve_reference("refs_steps:Loader.runn")
    assert info.value.message == (
        "cannot import 'refs_steps:Loader.runn': 'refs_steps:Loader' has no attribute 'runn' — "
        "did you mean 'run'?"
    )


def test_with_no_close_name_the_module_lists_what_it_defines(make_module: MakeModule) -> None:
    make_module("refs_steps", STEPS)
    with pytest.raises(ReferenceResolutionError) as info:
        resolve_reference("refs_steps:zzz")
    assert info.value.message == (
        "cannot import 'refs_steps:zzz': 'refs_steps' has no attribute 'zzz' — "
        "it defines: Loader, create"
    )


def _entry_points(*points: EntryPoint) -> object:
    def entry_points(*, group: str) -> list[EntryPoint]:
        return [p for p in points if p.group == group]

    return entry_points


def test_a_bare_name_is_an_entry_point(
    make_module: MakeModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_module("refs_steps", STEPS)
    point = EntryPoint("create-it", "refs_steps:create", refs.ENTRY_POINT_GROUP)
    monkeypatch.setattr("importlib.metadata.entry_points", _entry_points(point))
    assert resolve_reference("create-it") is __import__("refs_steps").create


def test_an_unknown_entry_point_suggests_close_names(monkeypatch: pytest.MonkeyPatch) -> None:
    point = EntryPoint("greet", "refs_steps:create", refs.ENTRY_POINT_GROUP)
    other = EntryPoint("greeting", "x:y", "another.group")
    monkeypatch.setattr("importlib.metadata.entry_points", _entry_points(point, other))
    with pytest.raises(ReferenceResolutionError) as info:
        resolve_reference("gret")
    assert info.value.half == "entry_point"
    assert info.value.message == (
        "no entry point named 'gret' in group 'choreo.callables' — did you mean 'greet'?"
    )
    with pytest.raises(ReferenceResolutionError, match="write 'module:function'"):
        resolve_reference("unrelated")


def test_a_broken_entry_point_says_what_it_points_to(monkeypatch: pytest.MonkeyPatch) -> None:
    point = EntryPoint("greet", "refs_gone:greet", refs.ENTRY_POINT_GROUP)
    monkeypatch.setattr("importlib.metadata.entry_points", _entry_points(point))
    with pytest.raises(ReferenceResolutionError) as info:
        resolve_reference("greet")
    assert info.value.half == "module"
    assert info.value.message.startswith(
        "entry point 'greet' (= 'refs_gone:greet'): cannot import 'refs_gone:greet': "
        "no module named 'refs_gone'"
    )


def test_display_path_is_relative_inside_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert refs.display_path(str(tmp_path / "a" / "steps.py")) == str(Path("a/steps.py"))
    assert refs.display_path("/elsewhere/steps.py") == "/elsewhere/steps.py"
