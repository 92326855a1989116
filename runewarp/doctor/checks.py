"""What a doctor check says and how it is printed: pure, no I/O.

A check has a stable name (`certificate-expiry tunnel.example.com`: what is
checked, then what it is checked on), a status, the reason and, unless it is
ok, the fix.  Text output is one line per check; JSON is a list of objects with
the same four fields.
"""

import json
from dataclasses import asdict, dataclass

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Result:
    check: str
    status: str
    detail: str
    fix: str = ""


def ok(check, detail):
    return Result(check, OK, detail)


def warn(check, detail, fix):
    return Result(check, WARN, detail, fix)


def fail(check, detail, fix):
    return Result(check, FAIL, detail, fix)


def line(result: Result) -> str:
    """`STATUS CHECK: DETAIL` plus `; fix: FIX` when there is something to do."""
    text = f"{result.status:<4} {result.check}: {result.detail}"
    return f"{text}; fix: {result.fix}" if result.fix and result.status != OK else text


def as_json(results) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)


def exit_status(results) -> int:
    """0 when nothing failed (warnings included), 1 otherwise."""
    return 1 if any(r.status == FAIL for r in results) else 0
