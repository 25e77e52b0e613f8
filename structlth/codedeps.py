"""The library files a script runs: every `structlth` module it imports, transitively, function-
level imports included, with the packages that hold them. The pipeline's `code` stage writes
one digest per stage script (codedeps/<script>.json); each stage depends on its own, so
DVC reruns a stage exactly when a file it imports changes, and no list of files is kept by hand.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "structlth"


def module_file(name: str, root: Path) -> Path | None:
    """The file of module `name` ('structlth.rounds') under root (the folder holding the
    package), or None when it is not a module of the package."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = root.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def imported_modules(path: Path) -> set[str]:
    """Dotted names of the modules `path` imports (for `from a import b`, both a and a.b: b
    may be a submodule; names that are not modules drop out in module_file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def closure(script: Path, root: Path, modules: Iterable[str] = ()) -> list[Path]:
    """script and every library file it runs, sorted: the transitive closure of imported_modules
    over files under root, with the __init__.py of every package on the way. modules: dotted
    names of the modules it loads by name (a method from structlth.pruning.registry), followed
    like imports."""
    start = [script.resolve(), *(f.resolve() for m in modules for part in _with_parents(m) if (f := module_file(part, root)))]
    seen, todo = set(start), list(start)
    while todo:
        for name in imported_modules(todo.pop()):
            for part in _with_parents(name):
                f = module_file(part, root)
                if f is not None and f.resolve() not in seen:
                    seen.add(f.resolve())
                    todo.append(f.resolve())
    return sorted(seen)


def code_manifest(script: Path, root: Path, modules: Iterable[str] = ()) -> dict[str, str]:
    """{path relative to root: sha256 prefix} of closure(script, root, modules)."""
    return {
        f.relative_to(root.resolve()).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in closure(script, root, modules)
    }


def manifest_digest(manifest: dict[str, str]) -> str:
    """One digest of a code manifest (names and contents)."""
    return hashlib.sha256("\n".join(f"{k} {v}" for k, v in sorted(manifest.items())).encode()).hexdigest()[:16]
