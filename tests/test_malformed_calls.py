"""Every malformed call of `malformed_calls` keeps the promise: a ValueError of the project's own, word for
word the reference's in each framework; the CLI's exit 2 with one line; no partial file. Run as a script,
`tests/malformed_calls.py` counts them instead (before the fixes of issue 22, 193 of 239 broke it)."""
import pytest

import malformed_calls as mc

CASES = mc.all_cases()
PER_FRAMEWORK = [c for c in CASES if c.per_framework and not c.cli]
ONCE = [c for c in CASES if not c.per_framework and not c.cli]
CLI = [c for c in CASES if c.cli]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return mc.Context(tmp_path_factory.mktemp("malformed"))


def test_the_catalogue_covers_every_class():
    assert {c.cls for c in CASES} == set(mc.CLASSES) and len({c.id for c in CASES}) == len(CASES) >= 200


@pytest.mark.parametrize("case", PER_FRAMEWORK, ids=[c.id for c in PER_FRAMEWORK])
def test_refused_in_the_reference_s_words(case, framework, ctx):
    outcome = mc.api_outcome(case, ctx, frameworks=tuple(dict.fromkeys(("numpy", framework))))
    assert outcome.kept, outcome.why


@pytest.mark.parametrize("case", ONCE, ids=[c.id for c in ONCE])
def test_refused_by_name(case, ctx):
    outcome = mc.api_outcome(case, ctx)
    assert outcome.kept, outcome.why


@pytest.mark.parametrize("case", CLI, ids=[c.id for c in CLI])
def test_cli_exits_2_with_one_line(case, ctx):
    outcome = mc.cli_outcome(case, ctx)
    assert outcome.kept, outcome.why
    assert outcome.messages["cli"].startswith("tmirror") and "Traceback" not in outcome.messages["cli"]
