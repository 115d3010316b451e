"""The layers, read from every import statement (module- and function-level, via ``ast``).

- ``iedp_jax.sd`` (the backbone) and ``iedp_jax.infra`` (the runtime) import nothing of ours
  outside themselves; the IEDP method (the rest of ``iedp_jax``) imports sd, infra and itself;
  ``diffseg_jax`` imports sd, infra and itself.
- No library module imports ``tests`` or ``benchmarks``, nor an entry point (``iedp_jax.train``,
  ``iedp_jax.evaluate``, ``diffseg_jax.evaluate``, ``diffseg_jax.segment``, ``diffseg_jax.captions``).
- No import cycle between library modules.
- A function-level import is only for an optional heavy dependency, with a comment saying so.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = ("iedp_jax", "diffseg_jax")
ALLOWED = {"sd": {"sd"}, "infra": {"infra"}, "iedp": {"sd", "infra", "iedp"}, "diffseg": {"sd", "infra", "diffseg"}}
ENTRY_POINTS = {"iedp_jax.train", "iedp_jax.evaluate", "iedp_jax.predict", "iedp_jax.export", "diffseg_jax.evaluate",
                "diffseg_jax.segment", "diffseg_jax.captions", "iedp_jax.class_embeddings", "iedp_jax.demo",
                "diffseg_jax.demo"}
# Optional heavy dependencies that may be imported inside a function (with a comment).
LAZY_OK = {"torch", "tensorflow", "tensorflow_datasets", "transformers", "diffusers", "gradio"}


def layer(module: str) -> str:
    if module == "iedp_jax.sd" or module.startswith("iedp_jax.sd."):
        return "sd"
    if module == "iedp_jax.infra" or module.startswith("iedp_jax.infra."):
        return "infra"
    return "diffseg" if module.split(".")[0] == "diffseg_jax" else "iedp"


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every library module under ``root``."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(path: Path, known: set[str]) -> Iterator[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for each import in the file; ``from a import b``
    names ``a.b`` when that is a module."""
    tree = ast.parse(path.read_text(), str(path))
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            yield name, node.lineno, id(node) in nested


def violations(root: Path) -> list[str]:
    """Every breach of the rules in the library under ``root``, as ``file:line: what``."""
    mods = modules(root)
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    out = []
    for mod, path in mods.items():
        lines = path.read_text().splitlines()
        for name, line, lazy in imports(path, known):
            where = f"{path.relative_to(root)}:{line}"
            top = name.split(".")[0]
            if top in ("tests", "benchmarks"):
                out.append(f"{where}: the library imports {name}")
            if lazy and top not in PACKAGES and (top not in LAZY_OK or "#" not in lines[line - 1]):
                out.append(f"{where}: function-level import of {name} (only optional heavy deps, with a comment)")
            if top not in PACKAGES:
                continue
            target = max((m for m in known if name == m or name.startswith(m + ".")), key=len, default=name)
            if lazy:
                out.append(f"{where}: function-level import of our own {target}")
            if layer(target) not in ALLOWED[layer(mod)]:
                out.append(f"{where}: {layer(mod)} module {mod} imports {layer(target)} module {target}")
            if target in ENTRY_POINTS and target != mod:
                out.append(f"{where}: {mod} imports the entry point {target}")
            if target != mod:
                graph[mod].add(target)
    out += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component with more than one module."""
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_the_library_keeps_its_layers():
    assert violations(ROOT) == []


def test_importing_a_layer_loads_nothing_above_it():
    """At run time too: the backbone and the runtime load no method, DiffSegmenter loads no IEDP."""
    code = ("import sys, {mod}; bad = sorted(m for m in sys.modules if m.startswith({above})); "
            "assert not bad, bad")
    checks = {"iedp_jax.sd.unet": ("iedp_jax.infra", "iedp_jax.model", "iedp_jax.data", "diffseg_jax"),
              "iedp_jax.infra.cli": ("iedp_jax.sd", "iedp_jax.model", "iedp_jax.data", "diffseg_jax"),
              "diffseg_jax.evaluate": ("iedp_jax.model", "iedp_jax.data", "iedp_jax.eval", "iedp_jax.trained")}
    for mod, above in checks.items():
        res = subprocess.run([sys.executable, "-c", code.format(mod=mod, above=above)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, (mod, res.stderr[-2000:])
    import iedp_jax

    assert callable(iedp_jax.load_trained)  # the package's public API, resolved on use


def _fake_library(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {"iedp_jax/__init__.py": "", "iedp_jax/sd/__init__.py": "", "iedp_jax/infra/__init__.py": "",
                      "diffseg_jax/__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_a_forbidden_import_is_reported(tmp_path):
    """Each rule fails on a library that breaks it (and only there)."""
    clean = {"iedp_jax/sd/unet.py": "import numpy\n", "iedp_jax/infra/mesh.py": "import jax\n",
             "iedp_jax/model.py": "from iedp_jax.sd import unet\nfrom iedp_jax.infra.mesh import x\n",
             "diffseg_jax/pipe.py": "from iedp_jax.sd.unet import UNet\n"
                                    "def f():\n    import torch  # optional: the reference only\n"}
    assert violations(_fake_library(tmp_path / "clean", clean)) == []
    breaches = {
        "sd imports infra": {"iedp_jax/sd/unet.py": "from iedp_jax.infra.mesh import x\n"},
        "infra imports iedp": {"iedp_jax/infra/mesh.py": "import iedp_jax.model\n"},
        "diffseg imports iedp": {"diffseg_jax/pipe.py": "from iedp_jax.model import IEDP\n"},
        "library imports tests": {"iedp_jax/model.py": "from tests.fakes import write_ade\n"},
        "entry point imported": {"iedp_jax/train.py": "", "iedp_jax/model.py": "from iedp_jax import train\n"},
        "our own lazy import": {"iedp_jax/model.py": "def f():\n    from iedp_jax.sd import unet\n"},
        "lazy import without comment": {"iedp_jax/model.py": "def f():\n    import torch\n"},
        "cycle": {"iedp_jax/a.py": "import iedp_jax.b\n", "iedp_jax/b.py": "import iedp_jax.a\n"},
    }
    for name, files in breaches.items():
        assert violations(_fake_library(tmp_path / name.replace(" ", "_"), {**clean, **files})), name
