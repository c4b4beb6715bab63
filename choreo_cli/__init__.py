"""choreo: run an ordered list of precheck/job steps over every record of a stream."""

from __future__ import annotations
