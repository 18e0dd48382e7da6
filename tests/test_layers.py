"""The packages import only downward: the import-linter contract in pyproject.toml holds, it can
fail, and no import circle is left anywhere in the project (module by module, function-level
imports included)."""
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("conformance", "numpy_ref", "torch_impl", "tf_impl", "study")
LINT = Path(sys.executable).parent / "lint-imports"


def lint(config: Path | None = None):
    args = [str(LINT)] + ([] if config is None else ["--config", str(config)])
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT)


def test_the_layer_contract_holds():
    result = lint()
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_the_contract_fails_when_a_layer_imports_upward(tmp_path):
    """The same tool on a contract the code breaks (the mirrors placed under the core they import)."""
    config = tmp_path / "contract.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["conformance", "numpy_ref"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "reversed"\ntype = "layers"\n'
                      'layers = ["conformance.core", "numpy_ref"]\n')
    result = lint(config)
    assert result.returncode != 0 and "numpy_ref" in result.stdout and "BROKEN" in result.stdout


def _cycles(graph) -> list[set]:
    """Strongly connected components of more than one module (Tarjan), over direct imports."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    sys.setrecursionlimit(10_000)
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return out


def test_no_import_circle_is_left():
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    assert _cycles(graph) == []
