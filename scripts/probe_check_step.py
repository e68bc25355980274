"""Does a model's state at the answer position already say whether a reply meets a criterion?

A linear probe (logistic regression, first two thirds to fit, last third to test) on the hidden
state where the check's digit is read, layer by layer, for both check orders. Chance is 0.5. A
probe far above chance on the untrained base means LoRA needs only to read out what is there; at
chance, training has to build the look-up from the criterion to the reply's marks itself.

    .venv/bin/python scripts/probe_check_step.py --data rows.jsonl [--judge FOLDER] [--n 600]

`--data`: rows from `pgenrm data synth` (the truth file beside them gives each reply's attributes).
`--judge`: a judge folder whose adapter to probe instead of the untrained base.
"""

from __future__ import annotations

import argparse
import collections
import random
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModelForCausalLM, AutoTokenizer

from pgenrm_plugins.backends.judge_folder import base_model_dir
from pgenrm_plugins.chain import synthesis as chain
from pgenrm_plugins.datasets.bench import load_bench
from pgenrm_plugins.datasets.synthetic import CRITERIA, load_truth, row_key
from pgenrm_plugins.training.score_stage import encode


def checks(path: str, n: int, seed: int):
    """n (conversation, reply, criterion, attribute, met) checks, one random criterion per reply."""
    truth = {r["key"]: r for r in load_truth(path)["rows"]}
    rows = load_bench(path).split("train")
    rng = random.Random(seed)
    rng.shuffle(rows)
    out = []
    for row in rows:
        t = truth[row_key(row.model_dump(mode="json"))]
        for reply, attrs in ((row.chosen.content, t["chosen"]), (row.rejected.content, t["rejected"])):
            (attribute, side), (name, description, _) = rng.choice(list(CRITERIA.items()))
            out.append((row.context, reply, f"{name}: {description}", attribute, attrs[attribute] == side))
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--judge", default=None)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--layers", default="6,12,18,24,30")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = base_model_dir("embedded")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if a.judge:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, a.judge).merge_and_unload()
    model.eval()
    layers = [int(x) for x in a.layers.split(",")]
    data = checks(a.data, a.n, seed=0)
    met = np.array([m for *_, m in data])
    fit = len(data) * 2 // 3
    for first in (False, True):
        started, states = time.time(), {layer: [] for layer in layers}
        with torch.no_grad():
            for prompt, reply, criterion, _, _ in data:
                ids = encode(tokenizer, chain.criterion_messages(prompt, reply, criterion, max_chars=1200,
                                                                 criterion_first=first))
                hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
                for layer in layers:
                    states[layer].append(hidden[layer][0, -1].numpy())
        print(f"criterion {'first' if first else 'last'}: {len(data)} checks, {time.time() - started:.0f} s")
        for layer in layers:
            x = np.stack(states[layer])
            x = (x - x[:fit].mean(0)) / (x[:fit].std(0) + 1e-6)
            guess = LogisticRegression(C=0.05, max_iter=2000).fit(x[:fit], met[:fit]).predict(x[fit:])
            by = collections.defaultdict(list)
            for g, m, (*_, attribute, _) in zip(guess, met[fit:], data[fit:]):
                by[attribute].append(g == m)
            print(f"  layer {layer:2d}: held-out {np.mean(guess == met[fit:]):.3f}  "
                  + "  ".join(f"{k} {np.mean(v):.2f}" for k, v in by.items()))


if __name__ == "__main__":
    main()
