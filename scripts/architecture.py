"""The module table of docs/architecture.md, generated from the code: each module's job (its
docstring's first sentence) and what it imports from convae (at the top, or inside a function).

    python3 scripts/architecture.py           # rewrite the table in docs/architecture.md
    python3 scripts/architecture.py --check   # exit 1 if the table is not current (a test runs this)

Reads the source with ``ast``; imports nothing of convae.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "convae"
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- modules: begin (scripts/architecture.py) -->", "<!-- modules: end -->"
# The wings in the order data takes through them; the shared front (top-level modules) first.
WINGS = ("", "network", "data", "training", "inference")


def modules() -> dict[str, Path]:
    """Dotted names below convae (``network.model``, ``cli``) -> their files, ``__init__``s left out
    except the data package's (which re-exports its sources)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__main__" or (parts[-1] == "__init__" and parts[:-1] != ["data"]):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(convae modules imported at the top, those imported inside functions) by ``path``."""
    top, lazy = set(), set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "convae":
            base = node.module.removeprefix("convae").lstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                names.append(sub if sub in known else base)
        elif isinstance(node, ast.Import):
            names += [a.name.removeprefix("convae.") for a in node.names if a.name.startswith("convae.")]
        names = [n for n in names if n in known]
        if not names:
            continue
        at_top = any(node is n for n in tree.body) or _in_type_checking(tree, node)
        (top if at_top else lazy).update(names)
    return top, lazy


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    guarded = [b for b in tree.body if isinstance(b, ast.If) and "TYPE_CHECKING" in ast.unparse(b.test)]
    return any(node is n for block in guarded for n in ast.walk(block))


def graph() -> dict[str, tuple[set[str], set[str]]]:
    found = modules()
    known = set(found)
    return {name: imports(path, known - {name}) for name, path in found.items()}


def job(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    return first.replace("|", "\\|")


def table() -> str:
    found, edges = modules(), graph()
    rows = ["| wing | module | job | imports (*inside functions*) |", "|---|---|---|---|"]
    for wing in WINGS:
        names = [n for n in found if (n.split(".")[0] if "." in n or n == "data" else "") == wing]
        for name in names:
            top, lazy = edges[name]
            deps = sorted(top) + [f"*{d}*" for d in sorted(lazy - top)]
            rows.append(f"| {wing or 'front'} | `{name}` | {job(found[name])} | {', '.join(deps) or '—'} |")
    return "\n".join(rows)


def rewritten(text: str) -> str:
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/architecture.md's table is not current")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        print(f"{DOC}: no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    new = rewritten(text)
    if args.check:
        if new != text:
            print(f"{DOC} is not current: run python3 scripts/architecture.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
