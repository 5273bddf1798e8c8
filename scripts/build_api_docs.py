"""Build the API reference from the docstrings with pdoc; any warning is an error.

::

    python -m pip install -e '.[docs]'
    python scripts/build_api_docs.py                 # writes build/api/index.html
    python scripts/build_api_docs.py --output DIR

Every public module is documented (private ``_name`` modules appear through the
packages that re-export them; ``__main__`` is left out because importing it runs the
command line). The docstrings are reStructuredText (``code``, :class:`Name`).
CI runs this, so a docstring pdoc cannot render, or a module that fails to import,
fails the build instead of leaving a hole in the reference.
"""

from __future__ import annotations

import argparse
import pkgutil
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def public_modules() -> list[str]:
    """``trioserver`` and every submodule without a ``_private`` part in its name."""
    import trioserver

    names = ["trioserver"]
    for info in pkgutil.walk_packages(trioserver.__path__, "trioserver."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def module_specs() -> list[str]:
    """The fewest specs that reach every public module.

    pdoc walks into a package's submodules unless its ``__all__`` leaves them out,
    and warns about a module named twice, so a module is named only if no earlier
    spec's walk reached it.
    """
    from pdoc.extract import walk_specs

    specs: list[str] = []
    reached: set[str] = set()
    for name in public_modules():
        if name not in reached:
            specs.append(name)
            reached.update(walk_specs([name]))
    return specs


def build(output: Path) -> list[str]:
    """Write the reference to ``output``; return the warnings (none on success)."""
    import pdoc
    import pdoc.render

    pdoc.render.configure(docformat="restructuredtext", search=True, show_source=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*module_specs(), output_directory=output)
    return [f"{w.category.__name__}: {w.message}" for w in caught]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "api")
    args = parser.parse_args()
    problems = build(args.output)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"API reference: {len(problems)} warning(s), treated as errors", file=sys.stderr)
        return 1
    print(f"API reference written to {args.output / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
