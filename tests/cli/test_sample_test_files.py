"""The sample pipelines pass their own test files, and those tests write no database."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.cli.conftest import CHOREO, ROOT, choreo_env


def test_the_samples_pass_their_tests_without_touching_a_database_file(tmp_path: Path) -> None:
    # Run from an empty folder: a test that forgot its in-memory database would create
    # statements.db here (the pipeline's default path is relative to the current folder).
    completed = subprocess.run(
        [str(CHOREO), "test", str(ROOT / "sample_pipelines"), "--format", "json"],
        cwd=tmp_path,
        env=choreo_env({"STATEMENTS_DB": ""}),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout.decode() + completed.stderr.decode()
    report = json.loads(completed.stdout)
    tested = {Path(f["file"]).parent.name: len(f["tests"]) for f in report["files"]}
    assert tested == {"api": 4, "hello": 4, "statements": 6}
    assert list(tmp_path.iterdir()) == []
