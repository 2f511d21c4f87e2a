"""Data contracts: the input event and the output record, each described once, in a versioned
JSON Schema file under ``loginpipe/core/schemas/``.

The input schema drives validation: ``events`` reads its field list, length limits and patterns
from here, and when an event fails, the schema compiled by fastjsonschema says which rule failed,
which names the dead-letter reason. The README's field tables are rendered from the schemas
(``python -m loginpipe.core.contracts --write README.md``; a test checks they are current).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import fastjsonschema

from loginpipe.core.addresses import is_ip

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
INPUT_SCHEMA = "login-event.v1.json"
OUTPUT_SCHEMA = "processed-login.v1.json"
OUTPUT_SCHEMA_ID = "processed-login/v1"  # the output records' "schema" field
FORMATS = {"ip-address": is_ip}  # formats of ours; the parser uses the same functions


@functools.cache
def load(name: str) -> dict:
    return json.loads((SCHEMA_DIR / name).read_text())


@functools.cache
def validator(name: str) -> Callable[[object], object]:
    """The schema compiled to Python once; raises fastjsonschema.JsonSchemaValueException."""
    return fastjsonschema.compile(load(name), formats=FORMATS)


def python_regex(pattern: str) -> re.Pattern:
    """A JSON Schema pattern for Python's ``re.search``: in JSON Schema (ECMA-262), a final ``$``
    means the end of the text; in Python it also matches before a final newline."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


# ---------------------------------------------------------------- README field tables

def _type_of(spec: dict) -> str:
    if "anyOf" in spec:
        return " or ".join(_type_of(option) for option in spec["anyOf"])
    kind = spec.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if "enum" in spec:
        return f"{kind}: " + ", ".join(f"`{v}`" for v in spec["enum"])
    if "const" in spec:
        return f"`{spec['const']}`"
    if kind == "array":
        return f"array of {_type_of(spec['items'])}"
    if "format" in spec:
        return f"{kind} ({spec['format']})"
    return kind


def field_table(schema: dict) -> str:
    """The schema's fields as a Markdown table: field, type, description."""
    rows = ["| field | type | description |", "| --- | --- | --- |"]
    for name, spec in schema["properties"].items():
        description = spec.get("description", "").replace("|", "\\|")
        rows.append(f"| `{name}` | {_type_of(spec)} | {description} |")
    return "\n".join(rows)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- fields:{name} -->", f"<!-- /fields:{name} -->"


def render_readme(text: str) -> str:
    """``text`` with each schema's marked table section replaced by the table rendered now."""
    for name in (INPUT_SCHEMA, OUTPUT_SCHEMA):
        start, end = _markers(name)
        before, found, rest = text.partition(start)
        if not found:
            raise ValueError(f"no {start} marker")
        _, found, after = rest.partition(end)
        if not found:
            raise ValueError(f"no {end} marker")
        text = f"{before}{start}\n{field_table(load(name))}\n{end}{after}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loginpipe.core.contracts",
        description="Print or refresh the README's field tables from the schemas.")
    parser.add_argument("--write", metavar="README", help="rewrite the marked tables in this file")
    parser.add_argument("--check", metavar="README", help="exit 1 if this file's tables are out of date")
    args = parser.parse_args(argv)
    path = Path(args.write or args.check or "")
    if not (args.write or args.check):
        for name in (INPUT_SCHEMA, OUTPUT_SCHEMA):
            print(f"{name}\n\n{field_table(load(name))}\n")
        return 0
    current = path.read_text()
    rendered = render_readme(current)
    if args.check:
        if rendered != current:
            print(f"{path}: field tables differ from the schemas; run: python -m loginpipe.core.contracts "
                  f"--write {path}", file=sys.stderr)
            return 1
        return 0
    path.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
