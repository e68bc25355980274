"""The crossover of two saved policies, each trained for one of two opposite synthetic users.

    python recipes/personalize-gpu/evaluate.py --data data/personalize/rows.jsonl --pair
        prints the two opposite users of the rows (their truth file `rows.truth.json` beside them)
    python recipes/personalize-gpu/evaluate.py --data data/personalize/rows.jsonl \\
        --base Qwen/Qwen2.5-1.5B-Instruct \\
        --policy u001=out/personalize-trl/u001-h8 --policy u005=out/personalize-trl/u005-h8 \\
        --max-new-tokens 512 --out out/personalize-trl/crossover

Held-out prompts: the answer bank's questions that neither user's train rows ask (never trained on by
either policy). Each policy (a transformers folder) answers them greedily, in eval mode with the KV
cache, and each answer is scored under BOTH users' true weights with the CPU recipe's code
(`pgenrm_trl.personalize`: `greedy_answers`, `latent_utility`, `summarize`). Writes results.json and
answers.jsonl to --out and prints the table; the crossover is the CPU recipe's:
[dU_A(pi_A) - dU_B(pi_A)] + [dU_B(pi_B) - dU_A(pi_B)], dU = after - before, with a 95% bootstrap interval.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="rows from `pgenrm data synth` (truth file beside them)")
    p.add_argument("--pair", action="store_true", help="print the two opposite users and the held-out count, exit")
    p.add_argument("--base", help="the untrained policy (model id or folder)")
    p.add_argument("--policy", action="append", default=[], metavar="USER=PATH",
                   help="a trained policy folder and its user; twice, one per user")
    p.add_argument("--max-new-tokens", type=int, default=512, help="the recipes' completion length")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=0, help="the first N held-out questions only (0: all; a quick check)")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("out/personalize-gpu"))
    return p.parse_args(argv)


def read_rows(path: Path) -> list[dict[str, Any]]:
    from pgenrm_plugins.datasets.bench import load_bench

    return [r.model_dump(mode="json") for r in load_bench(path).rows]


def heldout_questions(rows: list[dict[str, Any]], users: tuple[str, str]) -> list[str]:
    """The answer bank's questions that no train row of `users` asks, in the bank's order."""
    from pgenrm_plugins.datasets.answer_bank import BANK

    trained = {r["context"][-1]["content"] for r in rows if r["user_id"] in users and r["split"] == "train"}
    return [t.question for t in BANK if t.question not in trained]


def load_policy(path: str):
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if cuda else torch.float32)
    return model.to("cuda") if cuda else model


def main(argv=None) -> int:
    args = parse_args(argv)
    from pgenrm_plugins.datasets.synthetic import load_truth
    from pgenrm_trl.personalize.run import opposite_users

    truth = load_truth(args.data)
    if truth is None:
        raise SystemExit(f"no truth file beside {args.data}: make the rows with `pgenrm data synth`")
    rows = read_rows(args.data)
    if args.pair:
        a, b = opposite_users(truth)
        print(f"{a} ({truth['users'][a]['type']}) {b} ({truth['users'][b]['type']}): "
              f"{len(heldout_questions(rows, (a, b)))} held-out questions")
        return 0
    policies = dict(p.split("=", 1) for p in args.policy)
    if len(policies) != 2 or not args.base:
        raise SystemExit("give --base and two --policy USER=PATH (one per user)")
    a, b = policies
    unknown = [u for u in (a, b) if u not in truth["users"]]
    if unknown:
        raise SystemExit(f"user(s) {', '.join(unknown)} not in {args.data}'s truth")

    from transformers import AutoTokenizer

    from pgenrm_trl.personalize.probe import greedy_answers
    from pgenrm_trl.personalize.run import degenerate_fraction, summarize
    from pgenrm_trl.personalize.truth import LengthScale, latent_utility

    weights = {u: truth["users"][u]["weights"] for u in (a, b)}
    heldout = heldout_questions(rows, (a, b))[:args.limit or None]
    prompts = [[{"role": "user", "content": q}] for q in heldout]
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    scale = LengthScale.for_budget(args.max_new_tokens)
    answers = {}
    for name, path in (("base", args.base), (a, policies[a]), (b, policies[b])):
        model = load_policy(path)
        answers[name] = greedy_answers(model, tokenizer, prompts, args.max_new_tokens, args.batch_size)
        del model
    table = {name: {u: [latent_utility(weights[u], x.text, scale, x.finished) for x in ans] for u in (a, b)}
             for name, ans in answers.items()}
    stats = summarize(table, a, b, args.bootstrap, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"users": {u: {"type": truth["users"][u]["type"], "weights": weights[u]} for u in (a, b)},
               "policies": {"base": args.base, **policies}, "heldout": heldout, "stats": stats,
               "greedy_degenerate": {name: degenerate_fraction(ans) for name, ans in answers.items()}}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    with open(args.out / "answers.jsonl", "w", encoding="utf-8") as f:
        for i, q in enumerate(heldout):
            f.write(json.dumps({"question": q, **{n: ans[i].text for n, ans in answers.items()}},
                               ensure_ascii=False) + "\n")

    def fmt(c):
        return f"{c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"

    print(f"{len(heldout)} held-out questions; utility for {a} | for {b} | degenerate")
    degenerate = results["greedy_degenerate"]
    print(f"base       {fmt(stats['before'][a])} | {fmt(stats['before'][b])} | {degenerate['base']:.0%}")
    for u in (a, b):
        after = stats["policies"][u]["after"]
        print(f"policy {u} {fmt(after[a])} | {fmt(after[b])} | {degenerate[u]:.0%}; "
              f"own minus other {fmt(stats['policies'][u]['own_minus_other'])}")
    c = stats["crossover"]
    print(f"crossover {c['mean']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] "
          f"({'above 0' if c['lo'] > 0 else 'not above 0'}) -> {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
