"""Production code never imports the dev stack: the worker, the receiver and every CLI command
but `dev`/`demo` run without loading `devstack` (they find the stack's database through
billing.database_url). No import cycles between modules, and product modules stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

PROBE = """
import sys
import worker, webhooks.app, starter.cli
starter.cli._mount()
loaded = sorted(m for m in sys.modules if m == "devstack" or m.startswith("devstack."))
print(loaded)
"""


def test_worker_receiver_and_cli_do_not_import_devstack() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

# Product packages: every top-level package pyproject installs but the emulator (a dev tool with
# its own layout); tests and bench are not installed. Read from pyproject so a new job package is
# checked without anyone remembering to list it here.
ROOT = Path(__file__).resolve().parents[2]
PRODUCT = tuple(sorted(
    p for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    if "." not in p and p != "stripe_emulator"))
MAX_MODULE_LINES = 400


def _modules(packages: tuple[str, ...]) -> dict[str, Path]:
    found = {"worker": ROOT / "worker.py"}
    for pkg in packages:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = f
    return found


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules imported when `name` is imported (top level, `with`/`try` blocks included;
    `if TYPE_CHECKING:` and function bodies excluded: they run later or never)."""
    pending = list(ast.parse(path.read_text()).body)
    targets: list[str] = []
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.With, ast.Try, ast.If)):
            pending.extend(node.body)
        elif isinstance(node, ast.Import):
            targets += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: -node.level] if path.name != "__init__.py" else name.split(".")[: len(name.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            targets.append(base)
            targets += [f"{base}.{a.name}" for a in node.names]
    out = set()
    for t in targets:
        while t and t not in known:
            t = t.rpartition(".")[0]
        if t and t != name:
            out.add(t)
    return out


def test_no_import_cycles() -> None:
    known = _modules((*PRODUCT, "stripe_emulator"))
    graph = {n: _imports(n, p, known) for n, p in known.items()}
    cycles = []
    for start in graph:  # a depth-first search from each module for a path back to it
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, cycles[:5]


def test_product_modules_stay_small() -> None:
    """One job per module: a product module past ~400 lines is split (the emulator, tests and
    bench are not product code)."""
    sizes = {n: len(p.read_text().splitlines()) for n, p in _modules(PRODUCT).items()}
    assert not {n: s for n, s in sizes.items() if s > MAX_MODULE_LINES}
