"""Bad training input: a ValueError naming the argument, what was expected and what was received."""
import re

import numpy as np
import pytest

from conformance import training
from conformance.spec import families
from conformance.training import TrainConfig


@pytest.mark.parametrize("field,value,expected", [
    ("task", "seq2seq", "TrainConfig.task must be one of ['mlm', 'causal_lm', 'classification']; "
                        "received task='seq2seq'"),
    ("epsilon_convention", "torch", "TrainConfig.epsilon_convention must be one of ['bias_corrected', 'eps_hat']; "
                                    "received epsilon_convention='torch'"),
    ("steps", 0, "TrainConfig.steps must be a positive int; received steps=0"),
    ("accumulation_steps", 1.5, "TrainConfig.accumulation_steps must be a positive int; received accumulation_steps=1.5"),
    ("warmup_steps", -1, "TrainConfig.warmup_steps must be an int >= 0; received warmup_steps=-1"),
    ("learning_rate", 0.0, "TrainConfig.learning_rate must be > 0; received learning_rate=0.0"),
    ("weight_decay", -0.1, "TrainConfig.weight_decay must be >= 0; received weight_decay=-0.1"),
    ("beta2", 1.0, "TrainConfig.beta2 must be in [0, 1); received beta2=1.0"),
    ("adam_epsilon", 0.0, "TrainConfig.adam_epsilon must be > 0; received adam_epsilon=0.0"),
    ("max_grad_norm", -1.0, "TrainConfig.max_grad_norm must be > 0 or None; received max_grad_norm=-1.0"),
    ("clip_epsilon", -1e-6, "TrainConfig.clip_epsilon must be >= 0; received clip_epsilon=-1e-06"),
    ("layer_decay", 1.5, "TrainConfig.layer_decay must be in (0, 1]; received layer_decay=1.5"),
    ("mask_probability", 0.0, "TrainConfig.mask_probability must be in (0, 1]; received mask_probability=0.0"),
    ("loss_scale", 0.0, "TrainConfig.loss_scale must be > 0; received loss_scale=0.0"),
])
def test_bad_train_config_names_field_expected_and_received(field, value, expected):
    with pytest.raises(ValueError) as err:
        TrainConfig(**{field: value})
    assert str(err.value) == expected


@pytest.fixture(scope="module")
def tiny():
    tcfg = TrainConfig(task="classification", steps=1, seq_len=6)
    return (*training.setup("bert-tiny", "classification", tcfg), tcfg)


def test_labels_out_of_range(tiny):
    cfg, w, batches, tcfg = tiny
    bad = [{**batches[0], "labels": np.array([0, cfg.num_labels])}]
    with pytest.raises(ValueError, match=r"batches\[0\]\['labels'\] must lie in \[0, 3\) or be -100; "
                                         r"received values in \[0, 3\]"):
        training.train("numpy", cfg, w, bad, tcfg)


def test_labels_shape_mismatch(tiny):
    cfg, w, batches, tcfg = tiny
    bad = [{**batches[0], "labels": np.zeros((2, 6), np.int64)}]
    with pytest.raises(ValueError, match=r"batches\[0\]\['labels'\] must have shape \(B,\) = \(2,\); "
                                         r"received shape \(2, 6\)"):
        training.train("torch", cfg, w, bad, training.for_framework(tcfg, "torch"))


def test_no_counted_label_is_refused_not_nan(tiny):
    cfg, w, batches, tcfg = tiny
    mlm = tcfg.replace(task="mlm")
    mlm_cfg = training.task_config(cfg.replace(head="none"), "mlm")
    bad = [{**batches[0], "labels": np.full((2, 6), training.IGNORE_INDEX)}]
    with pytest.raises(ValueError, match=r"must count at least one position .* received none"):
        training.check_batches(mlm_cfg, mlm, bad)


def test_wrong_number_of_micro_batches(tiny):
    cfg, w, batches, tcfg = tiny
    with pytest.raises(ValueError, match=r"batches must hold steps x accumulation_steps = 2 micro-batches; received 1"):
        training.train("numpy", cfg, w, batches, tcfg.replace(accumulation_steps=2))


@pytest.mark.parametrize("framework,field,value,own", [
    ("torch", "epsilon_convention", "eps_hat", "'bias_corrected'"),
    ("tf", "epsilon_convention", "bias_corrected", "'eps_hat'"),
    ("torch", "clip_epsilon", 0.0, "1e-06"),
    ("tf", "clip_epsilon", 1e-6, "0.0"),
])
def test_a_library_refuses_the_other_librarys_convention(tiny, framework, field, value, own):
    cfg, w, batches, tcfg = tiny
    bad = training.for_framework(tcfg, framework).replace(**{field: value})
    with pytest.raises(ValueError, match=rf"TrainConfig.{field} must be {own} for {framework} .* "
                                         rf"received {field}={value!r}"):
        training.train(framework, cfg, w, batches, bad)


def test_task_needs_its_model_kind_and_dtype_must_be_trainable(tiny):
    cfg, w, batches, tcfg = tiny
    generators = sorted(f.name for f in families.FAMILIES.values() if "causal_lm" in f.tasks)
    assert {"gpt2", "llama"} <= set(generators)
    with pytest.raises(ValueError, match=re.escape(f"task 'causal_lm' trains a model of kind {generators}; "
                                                   f"received cfg.kind='bert'")):
        training.task_config(cfg, "causal_lm")
    with pytest.raises(ValueError, match=r"dtype must be one of \['float64', 'float32', 'mixed_bfloat16', "
                                         r"'mixed_float16'\]; received dtype='float16'"):
        training.train("torch", cfg, w, batches, training.for_framework(tcfg, "torch"), dtype="float16")
