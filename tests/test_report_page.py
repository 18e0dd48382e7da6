"""The report's shape (`conformance.report.write`): the verdict first and true to the run, a planted bug
shown as FAIL with its op named; the HTML page's table of contents resolving, long tables collapsed,
pass/fail coloured, nothing loaded from outside. And the progress helper every command uses."""
import io
from html.parser import HTMLParser

import pytest
import torch

import torch_impl.attention
from conformance.core.progress import Progress, drawn
from conformance.report import runner, write
from conformance.spec import presets


@pytest.fixture(scope="module")
def planted():
    """bert-tiny in numpy (correct) and torch with its padding mask shifted by one key (the bug planted in
    torch_impl only, as conformance/suites/test_planted_bugs.py plants it): a record as `tmirror report`
    makes it."""
    cfg = presets.get("bert-tiny")
    w = runner.weights.initialize(cfg, seed=0)
    inputs = runner.model_inputs(cfg, 2, 8)
    correct = torch_impl.attention.attention_mask
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch_impl.attention, "attention_mask", lambda *a, **k: torch.roll(correct(*a, **k), 1, dims=-1))
        _, _, runs = runner.run(cfg, w, inputs, ["numpy", "torch"], ["float32"], repeats=1)
    return write.record("bert-tiny", cfg, w, inputs, {"seed": 0}, runs), runs


def test_a_planted_bug_is_the_verdict_and_names_its_op(planted):
    rec, runs = planted
    bad = next(r for r in runs if r.framework == "torch")
    assert not bad.passed and bad.first_divergence is not None and "attention" in bad.first_divergence.name
    md = write.markdown(rec)
    head = md[:md.index("## Environment")]
    assert head.startswith("# bert-tiny: conformance report\n\n**FAIL: torch float32 out of tolerance; first op "
                           f"out of tolerance: torch float32 at `{bad.first_divergence.name}`.**"), head
    assert "| numpy       | float32 | pass " in head and "| torch       | float32 | FAIL " in head
    assert f"| {bad.first_divergence.name} " in head and "Parameters 4,385,920" in head
    assert "FLOPs not counted" in head  # this record has no costs section; `tmirror report`'s has (test_cli)


class Page(HTMLParser):
    """What the checks need of a page: ids, links, sources, <td> classes, and each table's rows and
    whether it sits inside <details>."""

    def __init__(self, text):
        super().__init__()
        self.ids, self.hrefs, self.sources, self.cells, self.tables = set(), [], [], [], []
        self.details = 0
        self.order = []  # section ids and the first <h2> text, in page order
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "section":
            self.order.append(a["id"])
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag in ("img", "script", "link", "iframe") and ("src" in a or "href" in a):
            self.sources.append(a.get("src") or a.get("href"))
        if tag == "td":
            self.cells.append(a.get("class"))
        if tag == "details":
            self.details += 1
        if tag == "table":
            self.tables.append({"rows": 0, "collapsed": self.details > 0})
        if tag == "tr" and self.tables:
            self.tables[-1]["rows"] += 1

    def handle_endtag(self, tag):
        if tag == "details":
            self.details -= 1


def test_the_html_page(planted):
    rec, _ = planted
    text = write.html_page(rec, figures={"A figure": "iVBORw0KGgo="})  # any base64 PNG: inlined as it is
    page = Page(text)
    assert page.order[:3] == ["verdict", "error-along-depth", "environment"]  # verdict, then the plot, then the rest
    assert text.index("class='banner fail'") < text.index("error per op along depth") < text.index("<h2>Environment</h2>")
    toc = [h for h in page.hrefs if h.startswith("#")]
    assert len(toc) == len(page.order) and {h[1:] for h in toc} == set(page.order) <= page.ids
    assert "fail" in page.cells and "pass" in page.cells
    long = [t for t in page.tables if t["rows"] - 1 > write.LONG_TABLE]
    assert long and all(t["collapsed"] for t in long)  # the model's config table, at least
    assert all(t["collapsed"] == (t["rows"] - 1 > write.LONG_TABLE) for t in page.tables)
    assert page.sources and all(s.startswith("data:image/png;base64,") for s in page.sources)
    assert "http://" not in text and "https://" not in text and "<script" not in text


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("mode,stream,expected", [("auto", Terminal, True), ("auto", io.StringIO, False),
                                                  ("on", io.StringIO, True), ("off", Terminal, False)])
def test_the_progress_bar_is_drawn_on_a_terminal_only(mode, stream, expected):
    out = stream()
    assert drawn(mode, out) is expected
    with Progress(3, "work", mode, stream=out) as bar:
        bar.step("first")
        bar.say("a message")
        bar.step("second", 2)
    text = out.getvalue()
    assert "a message\n" in text  # a command's own line, bar or not
    assert ("work:   0%|" in text and "first:  33%|" in text) is expected, repr(text)  # redrawn at most each 0.1 s
    assert ("\r" in text) is expected


def test_a_progress_mode_outside_the_three_is_an_error():
    with pytest.raises(ValueError, match=r"progress mode must be one of \['auto', 'on', 'off'\]; received 'yes'"):
        Progress(1, mode="yes")
