"""The mirror, checked mechanically: each component's three files say the same thing.

For every module of `numpy_ref` its twins in `torch_impl` and `tf_impl` must have the same public
functions, classes and methods (Keras's `call` is the twin of `forward`), and each function and
method present in all three must tap the same names in the same order and carry the same shape
comments, end of line by end of line. What the reference alone has is named by one rule
(`numpy_ref._module.REFERENCE_ONLY`: the hand-written backward and the cost formulas) or on its
docstring's `Reference only:` line; a deliberate difference of a twin is declared in the twin's
docstring, on `Only here:`, `Not here:` and `Own lines:` lines (backticked names outside
parentheses, continued on indented lines), and this test
reads exactly those declarations: an undeclared difference fails, and so does a stale one.

The torch leaf names are settled one way: a torch_impl module that subclasses one of torch's own
layers keeps its leaf names (`weight`, `bias`: `conformance.backends.torch_backend.TORCH_LEAVES`
maps them), every other parameter has its canonical name.
"""
import ast
import re
from pathlib import Path

import pytest

from conformance.backends import build, torch_backend
from conformance.spec.registry import CASES, case_id
from conformance.suites.cases import case_data
from numpy_ref._module import REFERENCE_ONLY

ROOT = Path(__file__).resolve().parents[2]
MIRRORED = sorted(p.name for p in (ROOT / "numpy_ref").glob("*.py") if not p.name.startswith("_")
                  and p.name not in REFERENCE_ONLY["modules"])
SHAPE = re.compile(r"#\s*(\([^)]*\))")


def declared(path: Path, heading: str) -> set[str]:
    """The backticked names on the docstring line that starts with `heading` (continued on indented lines)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    m = re.search(rf"^{re.escape(heading)}([^\n]*(?:\n[ \t]+[^\n]*)*)", doc, flags=re.M)
    return set(re.findall(r"`([\w.]+)`", re.sub(r"\([^)]*\)", "", m.group(1)))) if m else set()  # not in (...)


def members(path: Path) -> dict[str, tuple]:
    """Public function / class / method name -> (taps in order, shape comments in order)."""
    text = path.read_text()
    lines = text.split("\n")

    def body(node):
        taps = [c.args[0].value for c in sorted(
            (c for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
             and c.func.id == "tap" and c.args and isinstance(c.args[0], ast.Constant)), key=lambda c: c.lineno)]
        shapes = [m.group(1).replace(" ", "") for line in lines[node.lineno - 1:node.end_lineno]
                  if (m := SHAPE.search(line))]
        return taps, shapes

    out = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            out[node.name] = body(node)
        elif isinstance(node, ast.ClassDef):
            out[node.name] = ([], [])
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef) and (not sub.name.startswith("_") or sub.name == "__init__"):
                    out[f"{node.name}.{'forward' if sub.name == 'call' else sub.name}"] = body(sub)
    return out


def reference_only(name: str) -> bool:
    leaf = name.rpartition(".")[2]
    return leaf in REFERENCE_ONLY["methods"] or leaf.endswith(REFERENCE_ONLY["suffixes"])


@pytest.mark.parametrize("twin", ["torch_impl", "tf_impl"])
@pytest.mark.parametrize("module", MIRRORED)
def test_the_twins_have_the_same_members_taps_and_shape_comments(module, twin):
    ref_path, twin_path = ROOT / "numpy_ref" / module, ROOT / twin / module
    assert twin_path.is_file(), f"{twin}/{module} is missing: every numpy_ref module has a twin"
    ref, mine = members(ref_path), members(twin_path)
    ref_only = {n for n in ref if reference_only(n)} | declared(ref_path, "Reference only:")
    only_here, not_here, own = (declared(twin_path, h) for h in ("Only here:", "Not here:", "Own lines:"))
    expected = (set(ref) - ref_only - not_here) | only_here
    assert set(mine) == expected, (f"{twin}/{module}: undeclared {sorted(set(mine) - expected)}, "
                                   f"missing {sorted(expected - set(mine))}")
    for name in (only_here & set(ref)) | (not_here - set(ref)) | (own - (set(ref) & set(mine))):
        pytest.fail(f"{twin}/{module}: declaration of {name!r} is stale")
    for name in sorted(set(ref) & set(mine) - own):
        assert mine[name][0] == ref[name][0], f"{twin}/{module} {name}: taps {mine[name][0]}, reference {ref[name][0]}"
        assert mine[name][1] == ref[name][1], (f"{twin}/{module} {name}: shape comments {mine[name][1]}, "
                                               f"reference {ref[name][1]}")


def test_every_twin_module_has_a_reference():
    for twin in ("torch_impl", "tf_impl"):
        extra = {p.name for p in (ROOT / twin).glob("*.py") if not p.name.startswith("_")} - set(MIRRORED)
        assert not extra, f"{twin} modules with no numpy_ref twin: {sorted(extra)}"


MODELS = [c for c in CASES if c[1] == "default"]


@pytest.mark.parametrize("case", MODELS, ids=[case_id(c) for c in MODELS])
def test_torch_leaf_names_are_torch_layers_or_canonical(case):
    """A parameter of one of torch's own layers keeps torch's name; any other has the canonical leaf."""
    _, cfg, w, _, _ = case_data(*case)
    module = build("torch", cfg, w).module
    for path, m in module.named_modules():
        builtin = torch_backend.leaves_of(m)
        for name, _ in m.named_parameters(recurse=False):
            full = f"{path}.{name}" if path else name
            if builtin:
                assert name in {leaf.external for leaf in builtin}, f"{full}: not a leaf TORCH_LEAVES maps"
            else:
                assert full in w, f"{full}: a parameter torch_impl declares itself must have its canonical name"
    assert set(torch_backend.canonical_names(module)) == set(w)


def test_a_drifted_twin_is_caught(tmp_path):
    """The checker sees a renamed tap, a lost shape comment and an undeclared member."""
    text = (ROOT / "torch_impl" / "attention.py").read_text()
    ref = members(ROOT / "numpy_ref" / "attention.py")
    for drift in (text.replace('tap("probs"', 'tap("prob"'), text.replace("# (B, H, T, S)", "", 1),
                  text + "\n\ndef helper():\n    pass\n"):
        path = tmp_path / "attention.py"
        path.write_text(drift)
        mine = members(path)
        assert set(mine) - set(ref) - {"MultiHeadAttention.get_config"} or any(
            mine[n] != ref[n] for n in set(mine) & set(ref) if n != "fused_attention")
