"""Write records.jsonl for the statements sample: about a thousand bank statement lines.

The file is generated with a fixed seed, so running this script again writes the same
bytes (a test checks it). What it holds, besides the ordinary statement lines:

- repeated lines (the same statement and line number again): the second step's precheck
  finds them already loaded and skips them;
- three lines that are not valid JSON: ``invalid`` results;
- three records whose amount is a string ("twelve"): their job raises ValueError and they
  fail; each belongs to a statement that an earlier valid line already created;
- one blank line, which choreo ignores (no result line).

Run it from anywhere: ``python make_records.py`` writes records.jsonl next to this file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20240601
STATEMENTS = 100
LINES_PER_STATEMENT = (8, 11)  # inclusive bounds, drawn per statement
DUPLICATES = 40

INVALID_JSON = [
    '{"statement_id": "ST-0013", "line_no": 4, "amount": 17.25',  # truncated
    "{'statement_id': 'ST-0051', 'line_no': 2, 'amount': 3.5}",  # single quotes
    "statement_id=ST-0077 line_no=9 amount=1.0",  # not JSON at all
]
BAD_AMOUNTS = ["twelve", "n/a", "12,50 EUR"]


def render(seed: int = SEED) -> str:
    """Return the text of records.jsonl (one JSON value per line, ``\\n`` endings)."""
    rng = random.Random(seed)

    valid: list[dict[str, object]] = []
    line_count: dict[str, int] = {}
    for number in range(1, STATEMENTS + 1):
        statement_id = f"ST-{number:04d}"
        line_count[statement_id] = rng.randint(*LINES_PER_STATEMENT)
        for line_no in range(1, line_count[statement_id] + 1):
            amount = round(rng.uniform(-500.0, 2500.0), 2)
            valid.append({"statement_id": statement_id, "line_no": line_no, "amount": amount})
    rng.shuffle(valid)

    # Every line gets a sort key; extra lines are keyed after what they must follow.
    size = float(len(valid))
    keyed: list[tuple[float, str]] = [(float(i), json.dumps(r)) for i, r in enumerate(valid)]
    first_seen: dict[str, float] = {}
    for i, record in enumerate(valid):
        first_seen.setdefault(str(record["statement_id"]), float(i))

    for index in sorted(rng.sample(range(len(valid)), DUPLICATES)):
        keyed.append((rng.uniform(index + 0.5, size), json.dumps(valid[index])))

    for statement_id, amount in zip(
        sorted(rng.sample(sorted(line_count), len(BAD_AMOUNTS))), BAD_AMOUNTS, strict=True
    ):
        bad = {"statement_id": statement_id, "line_no": line_count[statement_id] + 1}
        bad["amount"] = amount
        keyed.append((rng.uniform(first_seen[statement_id] + 0.5, size), json.dumps(bad)))

    for text in [*INVALID_JSON, ""]:
        keyed.append((rng.uniform(1.0, size - 1.0), text))

    keyed.sort(key=lambda pair: pair[0])
    return "".join(text + "\n" for _, text in keyed)


def main() -> None:
    target = Path(__file__).with_name("records.jsonl")
    target.write_text(render(), encoding="utf-8", newline="\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
