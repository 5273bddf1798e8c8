"""The settings reference (``docs/settings.md``), rendered from the declarations in ``config``.

``config.py`` is the one source of truth for every setting; this module only
renders it, so the reference cannot drift from the code. Regenerate the file with::

    python -m trioserver.settings_doc --write docs/settings.md

and check it is current with ``--check docs/settings.md`` (the test suite does).
The type column is read from each field's annotation and, for the standard
parsers, the bounds or choices they were built with.
"""

from __future__ import annotations

import argparse
import inspect
import ipaddress
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from .config import SECTIONS, Address

__all__ = ["COMMAND", "main", "settings_markdown"]

#: How to regenerate the file; quoted in the file itself and in the test's failure.
COMMAND: Final = "python -m trioserver.settings_doc --write docs/settings.md"

_INTRO: Final = """\
# Settings reference

<!-- Generated from trioserver/config.py; do not edit. Regenerate with:
     {command} -->

Every setting trioserver has, with its type, its default, what it does and why the
default is what it is. This page is generated from the declarations in
`trioserver/config.py`, so it always matches the code it ships with.

Settings are read from a TOML file with one table per section:

```toml
[server]
listen = ["0.0.0.0:10000"]

[connection]
flood_check = false
```

- `python -m trioserver -c FILE` runs with a file; settings it does not name keep their
  defaults, and an unknown section or key, or a value that does not validate, stops the
  server with an error naming the key and the file.
- `--set SECTION.NAME=VALUE` (repeatable) overrides one setting on the command line, after
  the file; the value is TOML (`--set server.listen='["127.0.0.1:9000"]'`), and a bare word
  is taken as a string.
- Environment variables `TRIOSERVER_<SECTION>_<NAME>` (`TRIOSERVER_MASTER_WORKERS=4`) set a
  setting too, read as `--set` reads its value: above the file, below `--set`.
  `WEB_CONCURRENCY`, the platform convention, is the default of `master.workers`, below the
  file.
- `python -m trioserver check-config FILE` validates a file without running anything,
  `python -m trioserver settings` prints every setting as a commented TOML file to start from,
  and `settings --effective [-c FILE]` prints the values that would run.
- Relative paths are relative to the directory the server was started in, also after it
  detaches (`master.daemon`) and across reloads.

Sections: {toc}.
"""

_ROLE: Final = re.compile(r":[a-z]+:`~?([^`]+)`")


def _text(docstring: str) -> str:
    """A docstring's reST markup as Markdown: ``x`` and :role:`x` become `x`."""
    return _ROLE.sub(r"`\1`", docstring.replace("``", "`")).strip()


def _toml(value: Any) -> str:
    """A default as it would be written in the TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return '""'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, str | Path | Address | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return f'"{value}"'
    return repr(value)


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _bounds(parse: Callable[..., Any]) -> str:
    """What the standard parsers in config.py accept, read from their closures."""
    name = getattr(parse, "__qualname__", "")
    captured = inspect.getclosurevars(parse).nonlocals
    if name.startswith("_int."):
        lo, hi = captured["lo"], captured["hi"]
        return f"{_number(lo)} to {_number(hi)}" if hi is not None else f"≥ {_number(lo)}"
    if name.startswith("_float."):
        lo, hi, lo_open = captured["lo"], captured["hi"], captured["lo_open"]
        low = f"> {_number(lo)}" if lo_open else f"≥ {_number(lo)}"
        return f"{low}, ≤ {_number(hi)}" if hi is not None else low
    if name.startswith("_power_of_two."):
        return f"a power of two, {_bounds(captured['check'])}"
    if name.startswith("_choice."):
        return "one of " + ", ".join(f'`"{choice}"`' for choice in captured["choices"])
    return ""


#: Annotation (as written in config.py) -> how a TOML user writes such a value.
_TYPES: Final = {
    "bool": "boolean",
    "int": "integer",
    "float": "number",
    "str": "string",
    "Path": "path",
    "Path | None": 'path, or `""` for none',
    "Address | None": '`"host:port"`, or `""` for none',
    "tuple[Address, ...]": 'list of `"host:port"` strings',
    "tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]": (
        'list of networks (`"10.0.0.0/8"`, `"::1/128"`)'
    ),
}


def _type(field: attrs.Attribute[Any]) -> str:
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    shown = _TYPES.get(str(annotation), f"`{annotation}`")
    bounds = _bounds(field.metadata["parse"])
    if bounds.startswith("one of"):
        return bounds
    return f"{shown}, {bounds}" if bounds else shown


def _section(name: str, cls: type) -> list[str]:
    lines = [f"## `[{name}]`", ""]
    summary = _text(inspect.getdoc(cls) or "")
    summary = re.sub(rf"^`\[{name}\]`:\s*", "", summary)
    if summary:
        lines += [summary[0].upper() + summary[1:], ""]
    for field in attrs.fields(cls):
        lines += [
            f"### `{name}.{field.name}`",
            "",
            f"- Type: {_type(field)}",
            f"- Default: `{_toml(field.default)}`",
            "",
            field.metadata["help"],
            "",
        ]
        if field.metadata["why"]:
            lines += [f"Why: {field.metadata['why']}", ""]
    return lines


def settings_markdown() -> str:
    """The whole reference as Markdown, ending in one newline."""
    toc = ", ".join(f"[`[{name}]`](#{name})" for name in SECTIONS)
    lines = [_INTRO.format(command=COMMAND, toc=toc)]
    for name, cls in SECTIONS.items():
        lines += _section(name, cls)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the reference, write it (``--write FILE``) or check a file (``--check FILE``)."""
    parser = argparse.ArgumentParser(
        prog="python -m trioserver.settings_doc", description=main.__doc__
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="FILE", type=Path, help="write the reference to FILE")
    group.add_argument("--check", metavar="FILE", type=Path, help="exit 1 if FILE is not current")
    args = parser.parse_args(argv)
    text = settings_markdown()
    if args.write is not None:
        args.write.write_text(text, encoding="utf-8")
    elif args.check is not None:
        current = args.check.read_text(encoding="utf-8") if args.check.exists() else ""
        if current != text:
            print(f"{args.check} is out of date; run: {COMMAND}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
