"""The docs' directives: code and numbers come from the repository when the docs are built.

A page writes `{{ KIND ARGUMENT }}` on a line of its own; `expand` replaces it with Markdown:

    {{ source numpy_ref.attention.scaled_dot_product_attention }}   the definition's source, fenced
    {{ mirror attention.MultiHeadAttention }}    numpy_ref / torch_impl / tf_impl in three tabs
    {{ docstring numpy_ref.attention }}          a module's, class's or function's docstring
    {{ include generated/scale.md }}             a file under docs/, written by `tmirror figures`
    {{ table params bert-base }}                 a table computed now by `study.tables`
    {{ explain multi_head_attention }}           a link to docs/explain/NAME.md, or the command

Definitions are found by parsing the file with `ast`, never by importing it, so the docs build
needs neither torch nor TensorFlow. `resolve` is the one resolver: the mkdocs hook and the test
that walks every page both call it, so a renamed function breaks the test, not the reader.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGES = ("numpy_ref", "torch_impl", "tf_impl", "conformance", "study")
TWINS = ("numpy_ref", "torch_impl", "tf_impl")
KINDS = ("source", "mirror", "docstring", "include", "table", "explain")
DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\{\{\s*(?P<kind>\w+)\s+(?P<arg>[^}]*?)\s*\}\}[ \t]*$", re.M)


@dataclass(frozen=True)
class Definition:
    """A resolved dotted reference: the file, and the node (a Module for a whole module)."""
    reference: str
    path: Path
    node: ast.AST
    text: str

    @property
    def source(self) -> str:
        if isinstance(self.node, ast.Module):
            return self.text
        first = min([self.node.lineno] + [d.lineno for d in getattr(self.node, "decorator_list", [])])
        lines = self.text.splitlines()[first - 1:self.node.end_lineno]
        indent = min(len(l) - len(l.lstrip()) for l in lines if l.strip())
        return "\n".join(l[indent:] for l in lines)

    @property
    def docstring(self) -> str:
        doc = ast.get_docstring(self.node) if isinstance(
            self.node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) else None
        if not doc:
            raise ValueError(f"reference has no docstring: expected a documented module, class or function; "
                             f"received reference={self.reference!r}")
        return doc

    @property
    def location(self) -> str:
        line = getattr(self.node, "lineno", 1)
        return f"{self.path.relative_to(ROOT)}:{line}"


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _child(node: ast.AST, name: str) -> ast.AST | None:
    for item in getattr(node, "body", []):
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and item.name == name:
            return item
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.target.id == name:
            return item
        if isinstance(item, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in item.targets):
            return item
        if isinstance(item, ast.ImportFrom) and any((a.asname or a.name) == name and a.name == name for a in item.names):
            return item
    return None


def resolve(reference: str) -> Definition:
    """`package.module[.Class[.method]]` -> its Definition; ValueError naming what was not found."""
    parts = reference.split(".")
    if parts[0] not in PACKAGES or not all(p.isidentifier() for p in parts):
        raise ValueError(f"reference must be a dotted name in one of {list(PACKAGES)}; "
                         f"received reference={reference!r}")
    for i in range(len(parts), 0, -1):
        path = _module_file(parts[:i])
        if path is None:
            continue
        text = path.read_text()
        node: ast.AST = ast.parse(text)
        for j, name in enumerate(parts[i:], start=i):
            found = _child(node, name)
            if isinstance(found, ast.ImportFrom) and found.level == 0:  # a re-export: follow it
                return resolve(".".join([found.module, name, *parts[j + 1:]]))
            if found is None:
                raise ValueError(f"reference {reference!r} does not resolve: expected {name!r} defined in "
                                 f"{'.'.join(parts[:j])} ({path.relative_to(ROOT)}); received no such definition")
            node = found
        return Definition(reference, path, node, text)
    raise ValueError(f"reference {reference!r} does not resolve: expected a module file under {ROOT.name}/; "
                     f"received no file for {'.'.join(parts[:2])}")


def fenced(definition: Definition) -> str:
    return f'```python title="{definition.location}"\n{definition.source}\n```'


def mirror(name: str) -> str:
    """The same definition in the three implementations, as tabs (pymdownx.tabbed)."""
    out = []
    for package in TWINS:
        body = fenced(resolve(f"{package}.{name}"))
        out.append(f'=== "{package}"\n\n' + "\n".join("    " + line if line else "" for line in body.splitlines()))
    return "\n\n".join(out)


def include(relative: str) -> str:
    path = (DOCS / relative).resolve()
    if DOCS not in path.parents or not path.is_file():
        raise ValueError(f"include must name a file under docs/; received {relative!r} "
                         f"({'outside docs/' if DOCS not in path.parents else 'no such file: run `tmirror figures`'})")
    return path.read_text().rstrip("\n")


def explain(name: str) -> str:
    from conformance.spec import registry
    registry.get(name)  # ValueError for a name that is not a registry entry
    if (DOCS / "explain" / f"{name}.md").is_file():
        return f"A numeric walkthrough on a width-4 example: [explain/{name}](../explain/{name}.md)."
    return f"A numeric walkthrough on a width-4 example: `tmirror explain {name}`."


def render(kind: str, arg: str) -> str:
    """One directive's Markdown. The single entry point the hook and the tests use."""
    if kind == "source":
        return fenced(resolve(arg))
    if kind == "mirror":
        return mirror(arg)
    if kind == "docstring":
        definition = resolve(arg)
        return f'```text title="{definition.location}"\n{definition.docstring}\n```'  # its own words, verbatim
    if kind == "include":
        return include(arg)
    if kind == "table":
        from study import tables
        name, *args = arg.split()
        return tables.table(name, *args)
    if kind == "explain":
        return explain(arg)
    raise ValueError(f"directive kind must be one of {list(KINDS)}; received kind={kind!r}")


def directives(markdown: str) -> list[tuple[str, str]]:
    return [(m["kind"], m["arg"]) for m in DIRECTIVE.finditer(markdown)]


def expand(markdown: str, page: str = "") -> str:
    """Replace every directive line with its Markdown, indented like the directive."""
    def replace(m):
        try:
            text = render(m["kind"], m["arg"])
        except ValueError as e:
            raise ValueError(f"{page}: {{{{ {m['kind']} {m['arg']} }}}}: {e}") from None
        return "\n".join(m["indent"] + line if line else "" for line in text.splitlines())
    return DIRECTIVE.sub(replace, markdown)
