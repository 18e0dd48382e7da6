"""Streamed runs (`tmirror report --stream`, `conformance.report.stream`): one layer at a time, the same
numbers as the whole model.

The claims, each with the test that would fail without it: the streamed and whole-model paths give
the same per-op numbers element by element (tiny llama and bert-tiny here, bert-base and llama3.2-1b
in the --full tier); weights.initialize's tensors made alone, in row blocks, in columns or at some
rows are the whole model's; the head put back together from vocabulary chunks is the whole head;
keeping modules from layer to layer and building them per layer agree; a planted bug in one layer
is pinned to that layer by the replayed comparison and to it and every later one by the chained;
an interrupted run resumes without redoing what it finished; the replay jobs on two local Dask
workers give the same numbers as in-process; a checkpoint directory streams tensor by tensor; and
bad input (a missing tensor, a budget below one layer, a cluster nobody answers at) is one error.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conformance import weights
from conformance.core.config import Config
from conformance.report import fanout, runner, stream, write
from conformance.spec import presets, registry
from conformance.weights import canonical
from conformance.weights import stream as sources

RUNS = [("numpy", "float32"), ("torch", "float32"), ("tf", "float32")]


def streamed(cfg, tmp_path, runs=RUNS, batch=2, seq_len=8, preset="tiny", **options):
    source = sources.Initialized(cfg)
    inputs = runner.model_inputs(cfg, batch, seq_len)
    p = stream.plan(preset, cfg, source, inputs, runs, tmp_path, options.pop("budget", None))
    if "chunk" in options:
        p.chunk = options.pop("chunk")
    sec = stream.run(p, **options)
    return p, sec, write.stream_record(p, {})


def whole(cfg, runs=RUNS, batch=2, seq_len=8):
    inputs = runner.model_inputs(cfg, batch, seq_len)
    frameworks = list(dict.fromkeys(f for f, _ in runs))
    dtypes = list(dict.fromkeys(d for _, d in runs))
    _, _, out = runner.run(cfg, weights.initialize(cfg), inputs, frameworks, dtypes, repeats=1, summary=False)
    return out


def per_op_whole(runs):
    return {f"{r.framework} {r.dtype}": [(c.name, c.max_abs, c.max_rel, c.passed) for c in r.ops] for r in runs}


def per_op_streamed(rec):
    return {f"{r['framework']} {r['dtype']}": [(o["name"], o["max_abs"], o["max_rel"], o["passed"]) for o in r["ops"]]
            for r in rec["runs"]}


def outputs_whole(runs):
    return {f"{r.framework} {r.dtype}": {c.name.split(".", 1)[1]: (c.max_abs, c.max_rel, c.passed)
                                         for c in r.comparisons} for r in runs}


def outputs_streamed(rec):
    return {f"{r['framework']} {r['dtype']}": {k: (o["max_abs"], o["max_rel"], o["passed"]) for k, o in r["outputs"].items()}
            for r in rec["runs"]}


STREAMED_CASES = {"llama-tiny": lambda: presets.get("llama-tiny"), "bert-tiny": lambda: presets.get("bert-tiny"),
                  "gpt2-tiny": lambda: presets.get("gpt2-tiny"),
                  # positions from the ids (the pad id renumbered with the rows), no segment table, E != D
                  **{f"bert[{v}]": (lambda v=v: registry.get("bert").config(v)) for v in ("roberta", "distilbert",
                                                                                            "electra")}}


@pytest.mark.parametrize("case", list(STREAMED_CASES))
def test_streamed_per_op_numbers_equal_the_whole_model(case, tmp_path):
    cfg = STREAMED_CASES[case]()
    _, sec, rec = streamed(cfg, tmp_path)
    reference = whole(cfg)
    assert per_op_streamed(rec) == per_op_whole(reference)  # every op, every number, every verdict
    assert outputs_streamed(rec) == outputs_whole(reference)
    assert stream.passed(sec) and sec["first_layer_out_of_tolerance"]["chained"] == {f"{f} {d}": None for f, d in RUNS}
    assert len(sec["layers"]) == cfg.num_layers and sec["peak_rss"] > 0
    assert all(r["allocator"]["torch float32"]["allocator_peak"] > 0 for r in sec["layers"])


def test_positions_counted_from_the_ids_survive_the_renumbered_rows(tmp_path):
    """RoBERTa counts positions from the ids, from its pad id (1) on. The streamed embeddings see the ids
    renumbered into the rows they use: without 0 and 1 among them, the real token renumbered 1 would be
    counted as a pad, and the pad renumbered 0 as a token."""
    cfg = registry.get("bert").config("roberta")
    inputs = {"input_ids": np.array([[5, 7, 9, 1, 1], [6, 8, 5, 7, 9]]),
              "attention_mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}
    runs = [("torch", "float32")]
    p = stream.plan("roberta", cfg, sources.Initialized(cfg), inputs, runs, tmp_path)
    stream.run(p)
    _, _, reference = runner.run(cfg, weights.initialize(cfg), inputs, ["torch"], ["float32"], repeats=1, summary=False)
    assert per_op_streamed(write.stream_record(p, {})) == per_op_whole(reference)


def test_layers_stream_as_the_model_builds_them(tmp_path):
    """Gemma 2: every other layer slides, sandwich norms, soft-capped scores and logits, a tied head."""
    cfg = registry.get("llama").config("gemma2").replace(num_layers=3, layer_types=("sliding_attention",
                                                                                    "full_attention",
                                                                                    "sliding_attention"))
    runs = [("torch", "float32")]
    _, _, rec = streamed(cfg, tmp_path, runs, seq_len=9)
    assert per_op_streamed(rec) == per_op_whole(whole(cfg, runs, seq_len=9))
    names = [o[0] for o in per_op_streamed(rec)["torch float32"]]
    assert "uncapped_logits" in names and "layers.2.attention_output_norm.output" in names


def test_initialize_in_pieces_is_initialize(tmp_path):
    """numpy's Generator gives the same normals asked for at once or in pieces of any size, so one tensor,
    row blocks, columns and picked rows all equal weights.initialize's."""
    for shape, pieces in [((1000, 37), [1, 2, 3, 100, 894]), ((97, 32), [5, 92]), ((33,), [7, 26])]:
        rng = lambda: np.random.default_rng([0, 7])  # noqa: E731
        whole_draw = rng().standard_normal(shape, dtype=np.float32)
        g = rng()
        assert np.array_equal(whole_draw, np.concatenate([g.standard_normal((n, *shape[1:]), dtype=np.float32)
                                                          for n in pieces]))
    cfg = presets.get("llama-tiny")
    w = weights.initialize(cfg)
    source = sources.Initialized(cfg)
    name, table = "lm_head.kernel", "embeddings.token.table"
    assert all(np.array_equal(source.tensor(n), w[n]) for n in w)
    assert np.array_equal(np.concatenate(list(canonical.initialize_rows(cfg, table, w[table].shape, rows=37))), w[table])
    assert np.array_equal(source.block(table, 0, 300, 700), w[table][300:700])
    assert np.array_equal(source.block(table, 0, 700, 1000), w[table][700:])  # the stream read on, not again
    assert np.array_equal(source.block(name, 1, 123, 456), w[name][:, 123:456])
    rows = np.array([0, 5, 6, 999])
    assert np.array_equal(source.rows(table, rows), w[table][rows])
    layer = source.mapping(source.names("layers.1."), "layers.1.")
    assert set(layer) == {n[len("layers.1."):] for n in w if n.startswith("layers.1.")}
    assert np.array_equal(layer["feed_forward.up.kernel"], w["layers.1.feed_forward.up.kernel"])


def test_the_head_in_chunks_is_the_whole_head(tmp_path):
    """Chunks of 300 rows of a 1000-row vocabulary, an untied head (columns of lm_head) and a tied one (rows of
    the table): torch and TensorFlow give the whole head's numbers exactly. NumPy's OpenBLAS picks its kernel by
    the matrix shape at these tiny sizes, so a 300-column product can differ from the whole one in the last bit
    of float64: the reference's logits then move by ~1e-16, named here and bounded (at llama3.2-1b's sizes the
    chunks are exact too: the --full tier)."""
    for tied, runs in ((False, [("torch", "float32"), ("tf", "float32")]), (True, [("torch", "float32")])):
        cfg = presets.get("llama-tiny").replace(tie_embeddings=tied)
        _, sec, rec = streamed(cfg, tmp_path / str(tied), runs, chunk=300)
        assert sec["chunks"] == 4
        got, want = per_op_streamed(rec), per_op_whole(whole(cfg, runs))
        for label in got:
            assert [o for o in got[label] if o[0] != "logits"] == [o for o in want[label] if o[0] != "logits"]
            (g,), (w,) = [o for o in got[label] if o[0] == "logits"], [o for o in want[label] if o[0] == "logits"]
            assert g[3] == w[3] and abs(g[1] - w[1]) <= 1e-15 and abs(g[2] - w[2]) <= 1e-9 * w[2]
    rng = np.random.default_rng(0)
    h, table = rng.standard_normal((2, 8, 128)), rng.standard_normal((1000, 128))  # llama-tiny's sizes
    whole_logits, last = h @ table.T, h @ table[900:].T
    assert not np.array_equal(whole_logits[..., 900:], last)  # the named cause: another kernel for 100 columns
    assert np.abs(whole_logits[..., 900:] - last).max() <= 4 * np.spacing(np.abs(whole_logits).max())
    h, table = rng.standard_normal((1, 32, 2048)), rng.standard_normal((4000, 2048))  # llama3.2-1b's D and T
    assert all(np.array_equal((h @ table.T)[..., a:b], h @ table[a:b].T) for a, b in [(0, 1500), (1500, 3000),
                                                                                      (3000, 4000)])


def test_building_each_layer_or_keeping_one_gives_the_same_numbers(tmp_path):
    cfg = presets.get("llama-tiny")
    runs = [("torch", "float32")]
    p_keep, _, kept = streamed(cfg, tmp_path / "keep", runs)
    need = stream.rss() + p_keep.estimate["drop"] + (p_keep.estimate["keep"] - p_keep.estimate["drop"]) // 2
    p_drop, sec, dropped = streamed(cfg, tmp_path / "drop", runs, budget=need)
    assert p_keep.keep and not p_drop.keep and sec["policy"] == "drop"
    assert per_op_streamed(kept) == per_op_streamed(dropped)


def test_a_bug_in_one_layer_is_pinned_to_it(tmp_path, monkeypatch):
    """torch loads layer 1's query kernel untransposed (square: no shape check sees it). Replayed, only layer 1
    is out of tolerance; chained, layer 1 and every layer after it (they inherit the error)."""
    cfg = presets.get("llama-tiny").replace(num_layers=4)
    one, every = stream.Parts.layer, stream.Parts.layers  # a layer loaded alone (drop), or in every framework (keep)

    def planted(built, framework, i):
        if framework == "torch" and i == 1:
            q = built.module.attention.query.weight
            q.data = q.data.T.contiguous()
        return built

    monkeypatch.setattr(stream.Parts, "layer", lambda self, framework, dtype, cfg, stack, i, weights:
                        planted(one(self, framework, dtype, cfg, stack, i, weights), framework, i))
    monkeypatch.setattr(stream.Parts, "layers", lambda self, pairs, cfg, stack, i, weights:
                        {pair: (planted(built, pair[0], i), seconds)
                         for pair, (built, seconds) in every(self, pairs, cfg, stack, i, weights).items()})
    _, sec, rec = streamed(cfg, tmp_path, [("torch", "float32"), ("numpy", "float32")])
    first = sec["first_layer_out_of_tolerance"]
    assert first["replayed"] == {"torch float32": 1, "numpy float32": None}
    assert first["chained"] == {"torch float32": 1, "numpy float32": None}
    assert [r["replayed"]["torch float32"]["passed"] for r in sec["layers"]] == [True, False, True, True]
    assert [r["chained"]["torch float32"]["passed"] for r in sec["layers"]] == [True, False, False, False]
    assert not stream.passed(sec)  # a layer whose own error is out of tolerance fails the run
    assert sec["layers"][1]["chained"]["torch float32"]["first_op"] == "layers.1.attention.query.output"
    assert next(r for r in rec["runs"] if r["framework"] == "torch")["first_divergence"] == "layers.1.attention.query.output"


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    cfg = presets.get("llama-tiny").replace(num_layers=3)
    runs = [("torch", "float32")]
    _, _, uninterrupted = streamed(cfg, tmp_path / "once", runs)
    calls = []
    correct = stream.layer_stage

    def failing(p, parts, i, h):
        calls.append(i)
        if i == 2 and len(calls) == 3:
            raise KeyboardInterrupt  # stopped in the middle of layer 2
        return correct(p, parts, i, h)

    monkeypatch.setattr(stream, "layer_stage", failing)
    with pytest.raises(KeyboardInterrupt):
        streamed(cfg, tmp_path / "twice", runs)
    state = next((tmp_path / "twice" / stream.STATE).iterdir())
    done = sorted(f.name for f in state.iterdir())
    assert "chain-00001.json" in done and "chain-00002.json" not in done and not [f for f in done if f.startswith("head")]
    assert not [f for f in done if f.endswith(".tmp")]  # nothing half-written
    p, sec, rec = streamed(cfg, tmp_path / "twice", runs)
    assert calls == [0, 1, 2, 2]  # layers 0 and 1 were not run again
    assert "layer 0 chained" in sec["resumed"] and "layer 2 chained" not in sec["resumed"]
    assert per_op_streamed(rec) == per_op_streamed(uninterrupted)


def test_a_checkpoint_directory_streams_tensor_by_tensor(tmp_path):
    cfg = presets.get("llama-tiny")
    w = weights.initialize(cfg)
    weights.to_hf(cfg, w, tmp_path / "hf")
    hf_cfg, source = sources.open_source("llama-tiny", str(tmp_path / "hf"))
    assert hf_cfg == weights.from_hf(tmp_path / "hf")[0]
    source.check()
    assert all(np.array_equal(source.tensor(n), w[n]) for n in w)
    assert np.array_equal(source.block("lm_head.kernel", 1, 10, 20), w["lm_head.kernel"][:, 10:20])
    assert np.array_equal(source.rows("embeddings.token.table", np.array([3, 9])), w["embeddings.token.table"][[3, 9]])
    weights.save(w, tmp_path / "w.safetensors", cfg)
    _, file_source = sources.open_source("llama-tiny", str(tmp_path / "w.safetensors"))
    assert all(np.array_equal(file_source.tensor(n), w[n]) for n in w)
    inputs = runner.model_inputs(cfg, 2, 8)
    p = stream.plan("llama-tiny", hf_cfg, source, inputs, [("torch", "float32")], tmp_path / "out")
    stream.run(p)
    _, _, initialized = streamed(cfg, tmp_path / "init", [("torch", "float32")])
    assert per_op_streamed(write.stream_record(p, {})) == per_op_streamed(initialized)


def test_a_missing_layer_tensor_is_named_with_its_layer(tmp_path):
    cfg = presets.get("llama-tiny")
    weights.to_hf(cfg, weights.initialize(cfg), tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    _, source = sources.open_source("llama-tiny", str(tmp_path))
    with pytest.raises(canonical.WeightsError, match=r"layer 1 lacks model\.layers\.1\.mlp\.up_proj\.weight "
                                                     r"\(canonical layers\.1\.feed_forward\.up\.kernel\)"):
        stream.plan("llama-tiny", cfg, source, runner.model_inputs(cfg, 1, 4), [("torch", "float32")], tmp_path)
    assert not (tmp_path / stream.STATE).exists()  # refused before anything was written


def test_a_budget_below_one_layer_names_the_minimum(tmp_path):
    cfg = presets.get("llama-tiny")
    with pytest.raises(ValueError, match=r"--memory-budget 0\.00 GiB is below one layer of llama-tiny: a streamed run "
                                         r"needs at least \d+\.\d\d GiB"):
        stream.plan("llama-tiny", cfg, sources.Initialized(cfg), runner.model_inputs(cfg, 1, 4),
                    [("torch", "float32")], tmp_path, budget=1 << 20)
    assert stream.parse_bytes("12GiB") == 12 << 30 and stream.parse_bytes("1.5e9") == 1_500_000_000
    with pytest.raises(ValueError, match="--memory-budget must be a size such as 12GiB"):
        stream.parse_bytes("lots")


def test_shared_layers_are_refused_by_name(tmp_path):
    """ALBERT runs one layer's weights at every step: there is no layer i to load for i > 0."""
    cfg = registry.get("bert").config("albert")
    with pytest.raises(ValueError, match=r"ALBERT's layers share them: num_layer_groups must be None or "
                                         r"num_layers=3; received num_layer_groups=1"):
        stream.plan("albert", cfg, sources.Initialized(cfg), runner.model_inputs(cfg, 1, 4),
                    [("torch", "float32")], tmp_path)


def test_an_unreachable_cluster_is_one_error():
    with pytest.raises(ValueError, match=r"--cluster tcp://127\.0\.0\.1:9: no Dask scheduler answered within 2 s"):
        with fanout.executor(cluster="tcp://127.0.0.1:9", timeout=2):
            pass


def test_replay_jobs_on_two_local_workers_give_the_same_numbers(tmp_path):
    """A LocalCluster of two worker processes (`--workers 2`), reached by its address as a real cluster would be
    (`--cluster`): the same task code, the same numbers as in this process, the jobs on both workers."""
    cfg = presets.get("llama-tiny").replace(num_layers=4)
    runs = [("numpy", "float32")]
    _, here, _ = streamed(cfg, tmp_path / "here", runs)
    with fanout.executor(workers=2) as client:
        _, there, _ = streamed(cfg, tmp_path / "there", runs, cluster=client.scheduler.address)
    assert [r["replayed"] for r in there["layers"]] == [r["replayed"] for r in here["layers"]]
    assert len({r["replay_worker"] for r in there["layers"]}) == 2 and len(there["fanout"]["warm_up"]) == 2


def test_tmirror_report_stream(tmp_path):
    r = subprocess.run([sys.executable, "-m", "conformance", "report", "llama-tiny", "--stream", "--frameworks", "torch",
                        "--seq-len", "8", "--batch", "2", "--layers", "1", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "llama-tiny-1layers-stream.json").read_text())
    assert rec["config"]["num_layers"] == 1 and rec["stream"]["cost_model"]["depth"] == 2
    md = (tmp_path / "llama-tiny-1layers-stream.md").read_text()
    assert "## Streamed run: one layer at a time" in md and "### First layer out of tolerance" in md
    assert ("first layer out of tolerance replayed (its own error): None; chained (the error accumulated by that "
            "depth): layer None, first op none") in r.stdout
    assert r.stderr.count("\n") <= 1  # the one line that says where the state is: no library's noise
    bad = subprocess.run([sys.executable, "-m", "conformance", "report", "llama-tiny", "--workers", "2"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--workers goes with a streamed run (--stream)" in bad.stderr


def test_a_model_over_the_budget_streams_by_itself(tmp_path, monkeypatch):
    cfg = presets.get("llama-tiny")
    est = stream.estimate(cfg, [("torch", "float32")], 1, 4)
    assert est["whole"] > est["drop"] and est["parameters"] == sum(int(np.prod(s)) for s in
                                                                    registry.param_shapes(cfg).values())
    from conformance import cli
    from conformance.backends import backend
    backend("numpy"), backend("torch")  # resident before the budget is reckoned, as the run will find them
    budget = stream.rss() + (est["whole"] + est["keep"]) // 2
    code = cli.main(["report", "llama-tiny", "--frameworks", "torch", "--seq-len", "4", "--memory-budget", str(budget),
                     "--out", str(tmp_path)])
    assert code == 0 and (tmp_path / "llama-tiny-stream.json").is_file() and not (tmp_path / "llama-tiny.json").exists()


def test_config_of_a_zero_layer_part():
    """The parts a streamed run builds: no layers, and a vocabulary of the rows at hand."""
    cfg = presets.get("llama-tiny").without_layers(vocab_size=3)
    assert isinstance(cfg, Config) and set(registry.param_shapes(cfg)) == {"embeddings.token.table",
                                                                           "final_norm.gamma", "lm_head.kernel"}


@pytest.mark.full
@pytest.mark.parametrize("preset", ["bert-base", "llama3.2-1b"])
def test_full_size_streamed_per_op_numbers_equal_the_whole_model(preset, tmp_path):
    """At full size, element by element (no summary statistics): llama3.2-1b's tied head runs in five chunks of
    its 128,256-row table, and the whole-model side reads its weights lazily (`Source.mapping`), one model in
    memory at a time (the float64 reference: 9.2 GiB)."""
    cfg = presets.get(preset)
    _, sec, rec = streamed(cfg, tmp_path, batch=1, seq_len=32, preset=preset)
    inputs = runner.model_inputs(cfg, 1, 32)
    source = sources.Initialized(cfg)
    _, _, reference = runner.run(cfg, source.mapping(source.names()), inputs, ["numpy", "torch", "tf"], ["float32"],
                                 repeats=1, summary=False)
    assert per_op_streamed(rec) == per_op_whole(reference)
    assert outputs_streamed(rec) == outputs_whole(reference)
    assert stream.passed(sec) and sec["chunks"] == (5 if preset == "llama3.2-1b" else 1)
