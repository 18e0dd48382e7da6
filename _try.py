import numpy as np, time
from conformance.core import lora
from conformance import weights, build
from conformance.oracles import peft as peft_oracle
from conformance.spec import registry
from conformance.backends.base import cotangents_for
for head in ("mlm", "classification"):
    cfg = registry.get("bert").tiny.replace(head=head)
    lc = lora.LoraConfig(rank=4, alpha=8, targets=("query","value","inner"))
    w = weights.initialize(cfg, seed=0)
    full = {**w, **lora.initialize(lora.adapters(weights.shapes(cfg, lc)), seed=1, zero_b=False)}
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 8))
    t=time.time()
    print(peft_oracle.hf_targets(cfg, lc))
    m = build("torch", cfg, full, dtype="float64", lora=lc)
    c = {"logits": np.random.default_rng(1).standard_normal(m(input_ids=ids)["logits"].shape)}
    g = m.gradients(input_ids=ids, cotangents=c)
    outs, grads = peft_oracle.outputs_and_gradients(cfg, full, lc, {"input_ids": ids}, g.cotangents)
    for k in g.outputs:
        if k in outs: print(k, np.abs(outs[k]-g.outputs[k]).max())
    print("grad", max(np.abs(grads[k]-g.params[k]).max() for k in grads), len(grads))
    pm = peft_oracle.peft_model(cfg, full, lc)
    print(pm.get_nb_trainable_parameters(), lora.count(lora.linear_shapes(weights.shapes(cfg), lc), lc)["lora"], time.time()-t)
