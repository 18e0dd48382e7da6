"""`tmirror explain`: every registry entry has a walkthrough, every number in it is computed and
within the suite's tolerances, every expression is the reference's own line, in text and Markdown."""
import re
import subprocess
import sys
from pathlib import Path

import markdown
import numpy as np
import pytest

from conformance.report import explain as ex
from conformance.spec import registry
from numpy_ref.activations import softmax

NAMES = list(registry.ENTRIES)
# every walkthrough: each entry's, and the variants that declare one of their own (bert-roberta, bert-albert)
WALKED = NAMES + [f"{n}-{v}" for n, v in ex.variant_walkthroughs()]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def explained():
    """Each walkthrough run once for the module (the whole set takes a few seconds); "name-variant" for a
    variant's own walkthrough."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = ex.explain(*name.split("-", 1)) if name not in registry.ENTRIES else ex.explain(name)
        return cache[name]
    return get


def test_every_registry_entry_has_a_walkthrough():
    assert set(ex.walkthroughs()) == set(registry.ENTRIES)


@pytest.mark.parametrize("name", WALKED)
def test_renders_in_both_formats_within_100_columns(explained, name):
    e = explained(name)
    steps = [s for s in e.walkthrough.steps if s.op in e.reference]
    assert len(steps) == len(e.walkthrough.steps), "a declared step names no traced op"
    for fmt in ex.FORMATS:
        text = e.render(fmt)
        wide = [line for line in text.splitlines() if len(line) > 100]
        assert not wide, f"{name} {fmt}: {len(wide)} lines over 100 columns, e.g. {wide[0]!r}"
        for step in steps:
            assert step.op in text


@pytest.mark.parametrize("name", WALKED)
def test_differences_shown_are_within_the_tolerances(explained, name):
    e = explained(name)
    for step in e.walkthrough.steps:
        for fw, dt in ex.TWINS:
            assert ex.within(e.twins[fw, dt][step.op], e.reference[step.op], dt), (name, step.op, fw, dt)
    held = [lib for lib in e.library if not lib.differs]
    assert held, f"{name}: no library call is compared at any step"
    for lib in held:
        assert ex.within(lib.value, e.reference[lib.op], lib.dtype, lib.where), (name, lib.op, lib.call)
    assert " OUT" not in e.render("text")


def test_a_wrong_value_is_shown_out_of_tolerance(explained):
    e = explained("layer_norm")
    wrong = {**e.twins, ("torch", "float32"): {"output": e.reference["output"] + 1e-3}}
    e = ex.Explained(**{**vars(e), "twins": wrong})
    assert re.search(r"PyTorch float32 +1\.0e-03 +OUT", e.render("text"))


@pytest.mark.parametrize("name", WALKED)
def test_expressions_are_the_reference_source_lines(explained, name):
    e = explained(name)
    for op, (file, lineno, line) in e.expressions.items():
        source = (ROOT / file).read_text().splitlines()
        assert source[lineno - 1].strip() == line
        assert f'("{op.split("#")[0].rsplit(".", 1)[-1]}",' in line
    for inner, lines in e.inner:
        fn = getattr(inner.fn, "__func__", inner.fn)
        source = Path(sys.modules[fn.__module__].__file__).read_text().splitlines()
        for line in lines:
            assert source[line.lineno - 1].strip() == line.source


@pytest.mark.parametrize("name", [n for n, w in ex.walkthroughs().items() if w.inner])
def test_line_by_line_evaluation_reproduces_the_traced_value(explained, name):
    e = explained(name)
    assert e.inner
    for inner, lines in e.inner:
        assert lines[-1].source.startswith("return")
        np.testing.assert_array_equal(lines[-1].value, e.reference[inner.op])


def test_softmax_huge_logits_equal_the_small_ones_and_masks_hold(explained):
    e = explained("softmax")
    scores = e.inputs["scores"][0, 0]
    assert scores[1].tolist() == [1000.0, 1001.0, 1002.0]
    for probs in [e.reference["output"]] + [t["output"] for t in e.twins.values()]:
        p = np.asarray(probs, np.float64)[0, 0]
        assert np.isfinite(p).all()
        np.testing.assert_allclose(p[1], p[0], atol=1e-7)
        np.testing.assert_allclose(p[2, :2], softmax(np.array([1.0, 2.0])), atol=1e-7)
        assert p[2, 2] == 0 and (p[3] == 0).all()
    # The naive formula the walkthrough shows beside it does overflow there.
    naive = next(lib for lib in e.library if lib.call.startswith("np.exp"))
    assert np.isnan(naive.value[0, 0, 1]).all() and naive.differs
    # The intermediates show the shift that makes it work: x - max is the same for both rows.
    shift = next(v for line in e.inner[0][1] for src, v in line.nested if src == "x - row_max")
    np.testing.assert_array_equal(shift[0, 0, 1], shift[0, 0, 0])


def test_multi_head_attention_shows_the_reshapes(explained):
    e = explained("multi_head_attention")
    split = next(lines for inner, lines in e.inner if inner.op == "q")
    reshaped = next(v for src, v in split[-1].nested if src.startswith("x.reshape("))
    assert reshaped.shape == (1, 4, 4, 2) and split[-1].value.shape == (1, 4, 4, 2)   # (B, T, H, Dh) -> (B, H, T, Dh)
    np.testing.assert_array_equal(reshaped.transpose(0, 2, 1, 3), e.reference["q"])
    calls = {lib.call.split("(")[0] for lib in e.library if lib.op == "probs"}
    assert calls == {"nn.MultiheadAttention", "keras.layers.MultiHeadAttention"}
    text = e.render("text")
    assert "x.reshape(B, T, width // Dh, Dh) (1, 4, 4, 2)" in text


@pytest.mark.parametrize("name", ["multi_head_attention", "softmax", "bert"])
def test_markdown_is_valid(explained, name):
    md = explained(name).render("md")
    html = markdown.markdown(md, extensions=["tables", "fenced_code"])
    fences = md.count("\n```")
    assert fences and fences % 2 == 0 and html.count("<pre>") == fences // 2 + md.startswith("```")
    assert html.count("<table>") == len(re.findall(r"^\|[-|]+\|$", md, re.M)) > 0
    assert html.count("<h1>") == 1 and html.count("<h3>") == len(explained(name).walkthrough.steps)
    assert "```" not in html


def test_variant_and_bad_variant():
    e = ex.explain("multi_head_attention", "causal")
    probs = e.reference["probs"][0, 0]
    assert (np.triu(probs, 1) == 0).all() and e.cfg.causal
    with pytest.raises(ValueError, match=r"variant must be one of \['default', 'causal'.*received variant='sparse'"):
        ex.explain("multi_head_attention", "sparse")
    with pytest.raises(ValueError, match="format must be one of \\['text', 'md'\\]; received format='pdf'"):
        e.render("pdf")


def test_intermediates_records_each_assignment_and_nested_expression():
    def f(x, y):
        z = x * 2 + y
        return (z - 1) / 2
    lines = ex.intermediates(f, np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    assert [line.source for line in lines] == ["z = x * 2 + y", "return (z - 1) / 2"]
    np.testing.assert_array_equal(lines[0].value, [5.0, 8.0])
    assert [src for src, _ in lines[0].nested] == ["x * 2"]
    np.testing.assert_array_equal(dict(lines[1].nested)["z - 1"], [4.0, 7.0])
    np.testing.assert_array_equal(lines[1].value, [2.0, 3.5])


def test_write_all(tmp_path):
    paths = ex.write_all(tmp_path, names=["token_embedding"])
    assert paths == [tmp_path / "token_embedding.md"]
    assert paths[0].read_text().startswith("# token_embedding: TokenEmbedding")


def test_variant_walkthroughs_are_written_and_use_their_own_example(tmp_path):
    """bert's RoBERTa walkthrough: its own two rows (right- and left-padded) and transformers' RobertaModel
    beside it; the real tokens read position rows 2, 3, 4 in both rows and come out the same."""
    paths = ex.write_all(tmp_path, names=["bert"])
    assert [p.name for p in paths] == ["bert.md"] + [f"bert-{v}.md" for n, v in ex.variant_walkthroughs() if n == "bert"]
    e = ex.explain("bert", "roberta")
    assert e.inputs["input_ids"].tolist() == [[5, 7, 9, 1, 1], [1, 1, 5, 7, 9]]
    positions = e.reference["embeddings.position.output"]
    np.testing.assert_array_equal(positions[0, :3], positions[1, 2:])
    out = e.reference["encoder.0.output"]
    np.testing.assert_allclose(out[0, :3], out[1, 2:], atol=1e-12)
    assert {lib.call.split("(")[0] for lib in e.library} == {"RobertaModel"}


def tmirror(*args):
    return subprocess.run([sys.executable, "-m", "conformance", "explain", *args], capture_output=True,
                          text=True, timeout=600)


def test_cli_list_and_errors():
    listed = tmirror("--list")
    assert listed.returncode == 0 and all(re.search(rf"^{n} ", listed.stdout, re.M) for n in NAMES)
    assert max(map(len, listed.stdout.splitlines())) <= 100
    assert tmirror().stdout == listed.stdout
    bad = tmirror("lstm")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "tmirror explain: error: unknown component or model 'lstm'; known: linear, softmax")


def test_cli_writes_markdown(tmp_path, capsys):
    from conformance import cli  # in-process: the subprocess above already proves the entry point
    out = tmp_path / "seg.md"
    assert cli.main(["explain", "segment_embedding", "--format", "md", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert out.read_text() == ex.walkthrough("segment_embedding", fmt="md") + "\n"
    assert out.read_text().startswith("# segment_embedding: SegmentEmbedding")


VARIANTS = [(n, v) for n, e in registry.ENTRIES.items() for v in e.variants if v != "default"]


@pytest.mark.parametrize("name,variant", VARIANTS, ids=[f"{n}-{v}" for n, v in VARIANTS])
def test_every_variant_renders_within_tolerance(name, variant):
    e = ex.explain(name, variant)
    text = e.render("text")
    assert max(map(len, text.splitlines())) <= 100 and " OUT" not in text
    for step in e.walkthrough.steps:
        if step.op not in e.reference:
            continue
        for fw, dt in ex.TWINS:
            if step.op in e.twins[fw, dt]:
                assert ex.within(e.twins[fw, dt][step.op], e.reference[step.op], dt), (step.op, fw, dt)
            else:  # only a fused kernel skips an intermediate, and the walkthrough says so
                assert e.cfg.fused_attention and fw == "torch" and "not traced" in text


def test_committed_walkthroughs_quote_the_source_lines_they_name():
    """docs/explain/*.md (written by `explain.write_all`) name each step's reference line as
    `numpy_ref/FILE.py:N` above it: that line of the file must still be the quoted one, so a change that
    moves the reference's lines asks for the pages to be written again."""
    stale = []
    for page in sorted(Path("docs/explain").glob("*.md")):
        lines = page.read_text().splitlines()
        for where, quoted in zip(lines, lines[1:]):
            m = re.fullmatch(r"(numpy_ref/\w+\.py):(\d+)", where)
            if m:
                source = Path(m.group(1)).read_text().splitlines()
                n = int(m.group(2))
                if n > len(source) or not source[n - 1].strip().startswith(quoted.strip()):  # a long one wraps
                    stale.append(f"{page.name}: {where}")
    assert not stale, f"rerun explain.write_all(); stale references: {stale[:5]}"


def test_lora_walkthrough_agrees_everywhere_and_merges_exactly():
    text = ex.lora("text")
    assert all(len(line) <= ex.WIDTH for line in text.splitlines())
    md = ex.lora("md")
    assert md.count("| yes ") == 4 * len(ex.LORA_STEPS) and "| NO" not in md
    merged = float(md.split("max |plain block on W' - adapted block| = ")[1].split()[0])
    assert merged <= 1e-15
    assert "r (in + out) = 2 x (4 + 6) = 20 numbers against in x out = 24" in " ".join(md.split())
    committed = (Path(__file__).resolve().parents[1] / "docs" / "explain" / "lora.md").read_text()
    numbers = [line for line in md.splitlines() if line.startswith(("[", " [", "  ["))]  # the reference's values
    assert numbers and all(line in committed for line in numbers)
    with pytest.raises(ValueError, match="format must be one of"):
        ex.lora("html")
