"""Fuzz tests (hypothesis, derandomized): any input bytes, any YAML, --no-import.

Most examples run in-process for speed (the library's reader, coordinator and writer; typer's
CliRunner for `validate`); a few run the real command to prove the same through the CLI.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from choreo_cli import Cancel, Context, Coordinator, Skip, Step
from choreo_cli.cli.app import app
from choreo_cli.cli.console import Console, format_summary, setup_logging
from choreo_cli.cli.escapes import json_text, printable
from choreo_cli.core.summary import RunSummary
from choreo_cli.jsonl.reader import JsonlReader
from choreo_cli.jsonl.writer import ResultWriter

CHOREO = Path(sys.executable).parent / "choreo"
FAST = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# `validate` examples cost ~15 ms each in-process.
VALIDATE = settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FEW = settings(
    derandomize=True,
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Bytes that make JSON Lines interesting: line endings, blanks, a BOM, bad UTF-8, JSON bits.
_PIECES = [
    b"\n",
    b"\r\n",
    b"\r",
    b" ",
    b"\t",
    b"\x0b",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"{",
    b"}",
    b'"',
    b"[1, 2]",
    b'{"a": 1}',
    b"null",
    b"true",
    b"-0.5e3",
    b"1e999",
    b"\\u0000",
    b'"\\ud800"',
    b"\x00",
    b"99999999999999999999999",
]
jsonl_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(_PIECES) | st.binary(max_size=8), max_size=40).map(b"".join),
)


def _expected_lines(data: bytes) -> list[int]:
    """1-based numbers of the non-blank lines of ``data`` (a leading BOM dropped)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    return [n for n, piece in enumerate(pieces, 1) if piece.strip()]


def _job(ctx: Context, record: Any) -> Any:
    if isinstance(record, dict) and "a" in record:
        raise ValueError(record)
    if record is True:
        raise Cancel("true")
    return record


def _precheck(ctx: Context, record: Any) -> None:
    if isinstance(record, list):
        raise Skip("list", data=record)


def _typed(ctx: Context, record: int) -> int:
    return record


def _coordinator(workers: int) -> Coordinator:
    coordinator = Coordinator(workers=workers)
    coordinator.add_step(Step(name="one", job=_job, precheck=_precheck))
    coordinator.add_step(Step(name="typed", job=_typed))
    return coordinator


@pytest.fixture(scope="module")
def coordinators() -> Iterator[dict[int, Coordinator]]:
    made = {1: _coordinator(1), 3: _coordinator(3)}
    for coordinator in made.values():
        coordinator.open()
    yield made
    for coordinator in made.values():
        coordinator.close()


@FAST
@given(data=jsonl_bytes, workers=st.sampled_from([1, 3]), ordered=st.booleans())
def test_any_bytes_give_one_result_line_per_non_blank_line(
    coordinators: dict[int, Coordinator], data: bytes, workers: int, ordered: bool
) -> None:
    sink = io.BytesIO()
    reader = JsonlReader(io.BytesIO(data), keep_raw=True)
    rejects: list[bytes] = []
    with ResultWriter(sink, include_input=True, include_data=True) as writer:
        for result in coordinators[workers].run_many(reader, ordered=ordered):
            writer.write(result)
            if result.status != "succeeded":
                assert result.raw is not None
                rejects.append(result.raw)
    out = sink.getvalue()
    assert out == b"" or out.endswith(b"\n")
    lines = [json.loads(raw) for raw in out.splitlines()]
    expected = _expected_lines(data)
    assert sorted(line["line"] for line in lines) == expected
    assert sorted(line["index"] for line in lines) == list(range(len(expected)))
    if ordered:
        assert [line["line"] for line in lines] == expected
    for line in lines:
        assert line["status"] in ("succeeded", "failed", "cancelled", "invalid")
        if line["status"] == "invalid":
            assert line["error"]["phase"] in ("input", "precheck", "job")
    # Each reject is its input line, with a line ending.
    assert all(raw.endswith(b"\n") for raw in rejects)
    assert len(rejects) == sum(line["status"] != "succeeded" for line in lines)


@FEW
@given(data=jsonl_bytes.filter(lambda d: len(_expected_lines(d)) > 0))
def test_any_bytes_through_the_command(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "steps_fuzz.py").write_text(
        "def job(ctx, record):\n"
        "    if isinstance(record, dict):\n"
        "        raise ValueError(record)\n"
        "    return record\n",
        encoding="utf-8",
    )
    (tmp_path / "pipeline.yaml").write_text(
        "version: 1\nsteps:\n  - name: one\n    job: steps_fuzz:job\n", encoding="utf-8"
    )
    (tmp_path / "in.jsonl").write_bytes(data)
    done = subprocess.run(
        [str(CHOREO), "run", "pipeline.yaml", "-i", "in.jsonl", "--rejects", "r.jsonl", "-w", "2"],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert b"Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 1), done.stderr
    lines = [json.loads(raw) for raw in done.stdout.splitlines()]
    assert [line["line"] for line in lines] == _expected_lines(data)
    rejects = (tmp_path / "r.jsonl").read_bytes()
    assert rejects.count(b"\n") >= sum(line["status"] != "succeeded" for line in lines)


# -- choreo validate never shows a traceback ----------------------------------------------

runner = CliRunner()
_KEYS = [
    "version", "name", "description", "workers", "python_path", "context", "resources",
    "steps", "defaults", "job", "precheck", "retry", "timeout", "call", "with", "factory",
    "scope", "attempts", "delay", "backoff", "max_delay", "on", "retrys", "<<",
]  # fmt: skip
_REFS = [
    "steps_v:job",
    "steps_v.job",
    "steps_v:Nope",
    "steps_v:Klass.method",
    "nope_module_x:f",
    "builtins:len",
    "os.path:join",
    "steps_v:",
    ":x",
    "a b",
    "ConnectionError",
    "steps_v:Err",
    "${HOME}",
    "${CHOREO_FUZZ_UNSET}",
    "$${x}",
    "bare_name",
]
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**20),
    st.floats(allow_nan=True),
    st.sampled_from(_REFS),
    st.text(max_size=12),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), inner, max_size=5),
    ),
    max_leaves=25,
)
_step = st.fixed_dictionaries(
    {"name": st.text(max_size=6) | st.sampled_from(["a", "A", "b"])},
    optional={
        "job": st.sampled_from(_REFS) | _values,
        "precheck": st.sampled_from(_REFS) | _values,
        "retry": st.fixed_dictionaries(
            {},
            optional={
                "attempts": st.integers(-1, 4) | _scalars,
                "delay": _scalars,
                "backoff": _scalars,
                "on": st.lists(st.sampled_from(_REFS) | _scalars, max_size=3),
            },
        ),
        "timeout": _scalars,
        "with": _values,
    },
)
_documents = st.fixed_dictionaries(
    {"version": st.sampled_from([1, 2, "1", None])},
    optional={
        "steps": st.lists(_step, max_size=4) | _values,
        "resources": st.dictionaries(
            st.text(max_size=5),
            st.fixed_dictionaries({"factory": st.sampled_from(_REFS) | _values}),
            max_size=2,
        ),
        "context": _values,
        "defaults": _values,
        "python_path": st.lists(st.sampled_from([".", "..", "/nonexistent", ""]), max_size=2),
    },
)
_STEPS_V = """\
class Err(Exception):
    pass


class Klass:
    def method(self, ctx):
        return 1


def job(ctx, record=None, *, limit=1):
    return record
"""


def _validate(tmp_path: Path, text: str | bytes, *extra: str) -> None:
    path = tmp_path / "pipeline.yaml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    result = runner.invoke(app, ["validate", str(path), *extra])
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"validate raised {result.exception!r}") from result.exception
    assert result.exit_code in (0, 1), (result.exit_code, output)


@pytest.fixture
def validate_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "steps_v.py").write_text(_STEPS_V, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHOREO_FUZZ_UNSET", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


@VALIDATE
@given(document=_documents, strict=st.booleans())
def test_any_pipeline_document_validates_without_a_traceback(
    validate_dir: Path, document: dict[str, Any], strict: bool
) -> None:
    text = yaml.safe_dump(document, allow_unicode=True)
    _validate(validate_dir, text, *(["--strict"] if strict else []))


@VALIDATE
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_any_text_validates_without_a_traceback(validate_dir: Path, text: str | bytes) -> None:
    _validate(validate_dir, text, "--no-import")


_YAML_PIECES = [
    "version: 1\n",
    "steps:\n",
    "  - name: a\n",
    "    job: steps_v:job\n",
    "    retry: {attempts: 2}\n",
    "&a [*a]\n",
    "<<: *x\n",
    "!!python/object:os.system ls\n",
    "--- \n",
    "? [a]\n: b\n",
    "\t",
    "'unterminated\n",
    "{a: [b, {c: d}]}\n",
    "x: !!binary aGk=\n",
    "y: 2001-12-14\n",
    "\ufeff",
    "%YAML 1.1\n",
    "- ${X:-\n",
]


@VALIDATE
@given(pieces=st.lists(st.sampled_from(_YAML_PIECES), max_size=12))
def test_yaml_shaped_text_validates_without_a_traceback(
    validate_dir: Path, pieces: list[str]
) -> None:
    _validate(validate_dir, "".join(pieces))


@FEW
@given(document=_documents)
def test_any_pipeline_document_through_the_command(
    validate_dir: Path, document: dict[str, Any]
) -> None:
    (validate_dir / "pipeline.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CHOREO_FUZZ_UNSET"}
    done = subprocess.run(
        [str(CHOREO), "validate", "pipeline.yaml"],
        cwd=validate_dir,
        capture_output=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert b"Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.returncode in (0, 1)


# -- --no-import never imports user code --------------------------------------------------

_MARKED = """\
from pathlib import Path

Path(__file__).with_name("imported-" + __name__).touch()


class Err(Exception):
    pass


def job(ctx):
    return 1
"""
_marked_refs = st.sampled_from(
    [
        "marked_a:job",
        "marked_a.job",
        "marked_b:Err",
        "marked_c.sub:job",
        "marked_a:missing",
        "marked_b.job",
    ]
)
_marked_step = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "c", "d"]), "job": _marked_refs | _values},
    optional={
        "precheck": _marked_refs | st.fixed_dictionaries({"call": _marked_refs}),
        "retry": st.fixed_dictionaries({"attempts": st.just(2), "on": st.lists(_marked_refs)}),
    },
)
_marked_documents = st.fixed_dictionaries(
    {"version": st.just(1), "steps": st.lists(_marked_step, min_size=1, max_size=4)},
    optional={
        "resources": st.dictionaries(
            st.sampled_from(["db", "cache"]),
            st.fixed_dictionaries({"factory": _marked_refs}),
            max_size=2,
        ),
        "defaults": st.fixed_dictionaries(
            {"retry": st.fixed_dictionaries({"on": st.lists(_marked_refs)})}
        ),
    },
)


@pytest.fixture
def marked_dir(validate_dir: Path) -> Path:
    for name in ("marked_a", "marked_b"):
        (validate_dir / f"{name}.py").write_text(_MARKED, encoding="utf-8")
    (validate_dir / "marked_c").mkdir()
    (validate_dir / "marked_c" / "__init__.py").write_text(_MARKED, encoding="utf-8")
    (validate_dir / "marked_c" / "sub.py").write_text(_MARKED, encoding="utf-8")
    return validate_dir


def _imported(directory: Path) -> list[str]:
    found = [p.name for p in directory.rglob("imported-*")]
    found += [m for m in sys.modules if m.split(".")[0].startswith("marked_")]
    return found


@VALIDATE
@given(document=_marked_documents)
def test_no_import_never_imports_user_code(marked_dir: Path, document: dict[str, Any]) -> None:
    _validate(marked_dir, yaml.safe_dump(document), "--no-import")
    assert _imported(marked_dir) == []


def test_no_import_through_the_command_and_the_control(marked_dir: Path) -> None:
    text = (
        "version: 1\n"
        "resources: {db: {factory: marked_a:job}}\n"
        "defaults: {retry: {attempts: 2, on: ['marked_b:Err']}}\n"
        "steps:\n"
        "  - {name: a, precheck: marked_c.sub:job, job: marked_a:job}\n"
    )
    (marked_dir / "pipeline.yaml").write_text(text, encoding="utf-8")
    done = subprocess.run(
        [str(CHOREO), "validate", "--no-import", "pipeline.yaml"],
        cwd=marked_dir,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, b"ok: 1 file valid\n")
    assert _imported(marked_dir) == []
    # The control: without --no-import the same file does import them.
    done = subprocess.run(
        [str(CHOREO), "validate", "pipeline.yaml"],
        cwd=marked_dir,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert b"Traceback" not in done.stdout + done.stderr
    assert sorted(p.name for p in marked_dir.rglob("imported-*")) == [
        "imported-marked_a",
        "imported-marked_b",
        "imported-marked_c",
        "imported-marked_c.sub",
    ]


# -- no raw control character reaches people's output (design §11) ------------------------

# C0 controls, DEL, C1 controls, the Unicode line separators and bidirectional overrides.
_CONTROLS = [
    *map(chr, range(0x20)),
    "\x7f",
    *map(chr, range(0x80, 0xA0)),
    "\u2028",
    "\u2029",
    "\u202e",
    "\u2066",
]
_RAW = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# Text with control characters among harmless ones (quotes, colons, percent, backslashes).
_hostile = st.text(
    alphabet=st.sampled_from([*_CONTROLS, "a", "Z", " ", ":", "'", '"', "%", "\\", "[", "é"]),
    min_size=1,
    max_size=12,
)


def _assert_printable(text: str, *, lines: int | None = None) -> None:
    """No raw control character in ``text`` but line endings; ``lines``: how many lines."""
    found = _RAW.findall(text.replace("\n", ""))
    assert not found, f"raw {found!r} in {text!r}"
    if lines is not None:
        assert len(text.splitlines()) == lines, text


@FAST
@given(text=st.text(max_size=40) | _hostile)
def test_printable_leaves_no_control_character(text: str) -> None:
    shown = printable(text)
    _assert_printable(shown)
    assert "\n" not in shown
    kept = printable(text, multiline=True)
    _assert_printable(kept)
    assert kept.count("\n") == text.count("\n")
    if _RAW.search(text) is None:
        assert shown == text  # nothing to escape: the text as it is


@FAST
@given(text=st.text(max_size=20) | _hostile, byte=st.integers(0x80, 0xFF))
def test_json_text_is_utf8_json_for_any_file_name(text: str, byte: int) -> None:
    name = text + os.fsdecode(bytes([byte])) + ".yaml"  # an undecodable byte: a surrogate
    document = json_text({"file": name, "message": text}, indent=2)
    assert json.loads(document.encode("utf-8")) == {
        "file": text + f"\\x{byte:02x}.yaml",
        "message": text,
    }


@FAST
@given(message=_hostile, label=st.sampled_from(["error", "warning", "info"]))
def test_console_messages_are_one_line(message: str, label: str) -> None:
    stream = io.StringIO()
    getattr(Console(stream, fancy=False), label)(f"step {message}: {message}")
    _assert_printable(stream.getvalue(), lines=1)


@FAST
@given(names=st.lists(_hostile, min_size=1, max_size=3, unique=True))
def test_summary_table_has_one_line_per_step(names: list[str]) -> None:
    summary = RunSummary(names)
    summary.finish()
    _assert_printable(format_summary(summary), lines=3 + len(names))


@FAST
@given(step=_hostile, message=_hostile, value=_hostile)
def test_log_lines_are_one_line_and_tracebacks_keep_theirs(
    step: str, message: str, value: str
) -> None:
    stream = io.StringIO()
    logger = setup_logging("INFO", stream, fancy=False)
    try:
        logging.getLogger(f"choreo.step.{step}").warning("%s: %s", message, value)
        _assert_printable(stream.getvalue(), lines=1)
        try:
            raise ValueError(message)
        except ValueError:
            logging.getLogger(f"choreo.step.{step}").exception("failed on %s", value)
        logged = stream.getvalue().splitlines()[1:]
        _assert_printable("\n".join(logged))
        assert logged[1] == "Traceback (most recent call last):"
        # The exception's own lines (its message may have some) close the traceback.
        assert logged[-1 - message.count("\n")].startswith("ValueError: ")
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)


@VALIDATE
@given(name=_hostile, key=_hostile, no_import=st.booleans())
def test_validate_reports_one_line_per_problem_whatever_the_names(
    validate_dir: Path, name: str, key: str, no_import: bool
) -> None:
    document = {"version": 1, "steps": [{"name": name, "job": "steps_v:job", f"x{key}": 1}]}
    (validate_dir / "pipeline.yaml").write_text(
        yaml.safe_dump(document, allow_unicode=True), encoding="utf-8"
    )
    result = runner.invoke(
        app, ["validate", "pipeline.yaml", *(["--no-import"] if no_import else [])]
    )
    assert result.exit_code == 1, result.output
    _assert_printable(result.stdout)
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("pipeline.yaml:") for line in lines), lines
    assert any("unknown key 'x" in line for line in lines), lines
