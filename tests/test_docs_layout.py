"""docs/architecture.md's "Package layout" table names every module of the package,
and names nothing that is gone: a reader finds the data path from that table."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "runewarp"


def layout_rows():
    text = (ROOT / "docs/architecture.md").read_text()
    section = text.split("## Package layout", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \| (.*) \|$", section, re.M)}


def modules():
    return sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                  if p.name != "__init__.py")


def test_every_module_has_a_row_or_is_named_in_its_package_row():
    rows = layout_rows()
    missing = []
    for module in modules():
        package = module.rsplit("/", 1)[0] + "/" if "/" in module else None
        named_in_package = package in rows and f"`{module.rsplit('/', 1)[1]}`" in rows[package]
        if module not in rows and not named_in_package:
            missing.append(module)
    assert missing == []


def test_every_row_names_a_module_or_package_that_exists():
    assert [row for row in layout_rows() if not (PACKAGE / row).exists()] == []
