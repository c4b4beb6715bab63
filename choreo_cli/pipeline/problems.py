"""Problems found in a pipeline file, each with the position it was found at."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a pipeline file, printed as ``FILE:LINE:COL: message``.

    Lines and columns are 1-based. A warning is printed with a ``warning:`` prefix.

    >>> str(Problem("pipeline.yaml", 3, 5, "unknown key 'retrys' — did you mean 'retry'?"))
    "pipeline.yaml:3:5: unknown key 'retrys' — did you mean 'retry'?"
    """

    file: str
    line: int
    column: int
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.column}: {prefix}{self.message}"

    @property
    def is_error(self) -> bool:
        """True for an error, False for a warning."""
        return self.severity == "error"
