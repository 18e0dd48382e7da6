"""The docs: every registry entry has a page, every directive and code reference resolves, the site builds.

Code on the pages is included from the source at build time (`study.docsrc`), so a renamed function
fails here, not in front of a reader.
"""
import re
import subprocess
import sys

import pytest

from conformance.spec import registry
from study import docsrc

PAGES = sorted(p for p in docsrc.DOCS.rglob("*.md")
               if "generated" not in p.parts and "explain" not in p.parts)
# `numpy_ref.attention.MultiHeadAttention`, `conformance.core.config.Config.mask_fill`
CODE_REFERENCE = re.compile(r"`((?:%s)(?:\.\w+)+)`" % "|".join(docsrc.PACKAGES))
# `reports/bert-base.md`, `conformance/suites/test_planted_bugs.py`: repository paths
REPO_PATH = re.compile(r"`((?:%s|reports|tests|docs)/[\w./-]+\.(?:py|md|json|html|png))`" % "|".join(docsrc.PACKAGES))


def page_id(path):
    return str(path.relative_to(docsrc.DOCS))


def test_every_registry_entry_has_a_page():
    missing = []
    for name, entry in registry.ENTRIES.items():
        page = docsrc.DOCS / ("models" if entry.is_model else "components") / f"{name}.md"
        if not page.is_file():
            missing.append(str(page.relative_to(docsrc.ROOT)))
        elif f"{{{{ explain {name} }}}}" not in page.read_text():
            missing.append(f"{page.name} has no {{{{ explain {name} }}}} link")
    assert not missing, missing


def test_every_component_page_shows_the_three_implementations():
    for name, entry in registry.ENTRIES.items():
        text = (docsrc.DOCS / ("models" if entry.is_model else "components") / f"{name}.md").read_text()
        kinds = [kind for kind, _ in docsrc.directives(text)]
        assert "mirror" in kinds, f"{name}.md has no {{{{ mirror ... }}}} of the three implementations"
        assert f"{{{{ table component {name} }}}}" in text, f"{name}.md does not quote its computed costs"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_directive_resolves(page):
    text = page.read_text()
    for kind, arg in docsrc.directives(text):
        assert docsrc.render(kind, arg).strip(), f"{page_id(page)}: {{{{ {kind} {arg} }}}} rendered nothing"
    assert "{{" not in docsrc.expand(text, page_id(page)), f"{page_id(page)}: a directive was left unexpanded"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_code_reference_resolves(page):
    text = page.read_text()
    bad = []
    for ref in CODE_REFERENCE.findall(text):
        try:
            docsrc.resolve(ref)
        except ValueError as e:
            bad.append(str(e))
    bad += [f"no file {p}" for p in REPO_PATH.findall(text) if not (docsrc.ROOT / p).is_file()]
    assert not bad, f"{page_id(page)}: " + "; ".join(bad)


def test_included_source_is_the_file_itself():
    """A `source` directive shows the lines of the file, not a copy that could drift."""
    d = docsrc.resolve("numpy_ref.attention.scaled_dot_product_attention")
    text = (docsrc.ROOT / "numpy_ref" / "attention.py").read_text()
    assert d.source in text and d.source.startswith("def scaled_dot_product_attention(")
    tabs = docsrc.render("mirror", "attention.scaled_dot_product_attention")
    for package in docsrc.TWINS:
        assert f'=== "{package}"' in tabs and f"{package}/attention.py" in tabs
    method = docsrc.resolve("numpy_ref.attention.MultiHeadAttention.split_heads")
    assert method.source.startswith("def split_heads(self, x):")  # dedented out of its class


def test_generated_numbers_are_current():
    """The committed parameter table equals what the code computes now."""
    from study import figures
    assert (docsrc.DOCS / "generated" / "parameters.md").read_text() == figures.parameters_md()
    assert (docsrc.DOCS / "generated" / "families.md").read_text() == figures.families_md(
        __import__("study.questions").questions.model_families(), 128)
    assert (docsrc.DOCS / "generated" / "streaming.md").read_text() == figures.streaming_md(docsrc.ROOT / "reports")


@pytest.mark.parametrize("kind, arg, expected", [
    ("source", "numpy_ref.attention.no_such_function", "'no_such_function' defined in numpy_ref.attention"),
    ("source", "numpy_ref.nowhere.f", "expected 'nowhere' defined in numpy_ref"),
    ("source", "os.path.join", "a dotted name in one of"),
    ("mirror", "normalization.layer_norm", "'layer_norm' defined in torch_impl.normalization"),
    ("docstring", "conformance.core.config.Config.mask_fill", "has no docstring"),
    ("include", "generated/missing.md", "no such file"),
    ("include", "../README.md", "outside docs/"),
    ("table", "nonsense", "table must be one of"),
    ("explain", "attention", "unknown component or model 'attention'"),
    ("figure", "x", "directive kind must be one of"),
])
def test_bad_directive_names_what_was_expected_and_received(kind, arg, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        docsrc.render(kind, arg)


def test_a_bad_directive_names_its_page():
    with pytest.raises(ValueError, match=r"page\.md: \{\{ source numpy_ref\.attention\.nope \}\}"):
        docsrc.expand("text\n{{ source numpy_ref.attention.nope }}\n", "page.md")


def test_site_builds_strict(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                            cwd=docsrc.ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    html = (tmp_path / "site" / "components" / "multi_head_attention" / "index.html").read_text()
    assert "tabbed-set" in html and "torch_impl/attention.py" in html and "2,362,368" in html
