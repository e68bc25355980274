"""Diagnostic (docs/training.md): is the personal signal linearly present in the frozen base judge?

Each test pair of a user with train rows is shown as the shipped judge reads it (`criteria: none`,
the last 4 train pairs as `contrast` lines, texts cut to 450 characters); the feature is
h(chosen) - h(rejected), the last token's hidden state at a few layers. A logistic regression fit
on the pairs of TRAIN's users is scored on HELDOUT's users. If it reads the users there, the base
model already computes the match and training only has to route it to the digit; if not, training
has to build it.

    .venv/bin/python scripts/probe_frozen_states.py data/train.jsonl data/heldout.jsonl --pairs 300
"""
import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModelForCausalLM, AutoTokenizer

from pgenrm_plugins.backends.judge_folder import base_model_dir
from pgenrm_plugins.chain import prompts
from pgenrm_plugins.datasets.bench import load_bench
from pgenrm_plugins.training.score_stage import encode

LAYERS = [6, 12, 18, 24, 30]
VIEW, MAX_CHARS = 4, 450


def split_test_pairs(path, limit=None):
    bench = load_bench(path)
    histories = bench.histories("train")
    found = [(list(histories[r.user_id])[-VIEW:], r) for r in bench.split("test") if r.user_id in histories]
    return found[:limit]


@torch.no_grad()
def features(model, tokenizer, digit_ids, view, row):
    """h(chosen) - h(rejected) at LAYERS, and the base's own digit log-odds margin."""
    states, odds = [], []
    for reply in (row.chosen.content, row.rejected.content):
        conversation = prompts.direct_question(view, None, row.context, reply, max_items=VIEW, max_chars=MAX_CHARS,
                                               render="contrast")
        out = model(input_ids=torch.tensor([encode(tokenizer, conversation)]), output_hidden_states=True,
                    logits_to_keep=1)
        states.append(np.stack([out.hidden_states[layer][0, -1].numpy() for layer in LAYERS]))
        logp = torch.log_softmax(out.logits[0, -1, digit_ids], -1)
        odds.append(float(logp[-1] - logp[0]))
    return states[0] - states[1], odds[0] - odds[1]


def main():
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("train")
    cli.add_argument("heldout")
    cli.add_argument("--pairs", type=int, default=300, help="train pairs to fit on")
    cli.add_argument("--threads", type=int, default=2)
    args = cli.parse_args()
    torch.set_num_threads(args.threads)
    folder = base_model_dir("embedded")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    digit_ids = [tokenizer.convert_tokens_to_ids(d) for d in prompts.DIGITS]
    started = time.time()
    fit_on = [features(model, tokenizer, digit_ids, v, r) for v, r in split_test_pairs(args.train, args.pairs)]
    scored = [features(model, tokenizer, digit_ids, v, r) for v, r in split_test_pairs(args.heldout)]
    print(f"{len(fit_on)} train and {len(scored)} held-out pairs in {time.time() - started:.0f} s")
    print(f"the base's own digit (log p(9) - log p(1)): held-out {np.mean([o > 0 for _, o in scored]):.3f}")
    for i, layer in enumerate(LAYERS):
        x_fit = np.array([f[i] for f, _ in fit_on])
        x_test = np.array([f[i] for f, _ in scored])
        scale = x_fit.std(0) + 1e-6
        for c in (0.001, 0.01, 0.1):  # mirrored pairs: both classes, no intercept
            probe = LogisticRegression(fit_intercept=False, C=c, max_iter=2000)
            probe.fit(np.vstack([x_fit / scale, -x_fit / scale]), [1] * len(x_fit) + [0] * len(x_fit))
            fit_acc = np.mean(probe.decision_function(x_fit / scale) > 0)
            test_acc = np.mean(probe.decision_function(x_test / scale) > 0)
            print(f"layer {layer:2d}, C {c}: train {fit_acc:.3f}, held-out {test_acc:.3f} (n={len(x_test)})")


if __name__ == "__main__":
    main()
