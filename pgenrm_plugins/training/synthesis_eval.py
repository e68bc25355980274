"""Each step of a synthesis judge measured alone, on held-out users of `pgenrm data synth`:

    recovery   the synthesis the judge writes from a user's history (view 0, no persona) against
               teacher `stated`'s for the same view: of the attributes the teacher claims, how many
               the judge names on the same side, on the wrong side, or not at all; and the ones it
               claims that the view does not support
    checks     each test reply against every criterion of the generator's vocabulary: how often
               the digit says "met" (above 5) exactly when the reply has the attribute, and the mean
               digit of met and unmet checks (a step that learnt nothing gives both about 5)
    ceiling    the test pairs scored against the *teacher's* synthesis: how far the check step
               alone carries (the best the first step could hand it)
    vocabulary the test pairs scored against every criterion of the generator's vocabulary, each
               weighted by how it separates the user's own past pairs (`reward.verify`'s rule), no
               synthesis written: how much of the user the check step reads on its own
    end to end the test pairs scored as `pgenrm score` would (Ind-1, no persona)

A judgement is right when the chosen reply gets the higher reward; a tie is wrong. Users are
grouped as `datasets.bench.user_group` says (warm, cold_start, no_history).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from pgenrm_plugins.chain import synthesis as chain
from pgenrm_plugins.chain.parser import Criterion, ParseFailure
from pgenrm_plugins.datasets.bench import load_bench
from pgenrm_plugins.datasets.synthetic import CRITERIA, criterion_name, load_truth
from pgenrm_plugins.training.synthesis_stage import StatedTeacher

_SIDES = {name: key for key, (name, _, _) in CRITERIA.items()}  # criterion name -> (attribute, side)


def claims(text: str) -> dict[str, int]:
    """attribute -> side, of the criteria a synthesis names (criteria of other names are skipped)."""
    parsed = chain.parse_synthesis(text)
    if isinstance(parsed, ParseFailure):
        return {}
    out = {}
    for c in parsed.criteria:
        key = _SIDES.get(c.name.split(":")[0].strip())
        if key and key[0] not in out:
            out[key[0]] = key[1]
    return out


def evaluate_synthesis(judge: str | Path, data: str | Path, *, max_rows: int | None = None,
                       options: dict[str, Any] | None = None) -> dict[str, Any]:
    import torch

    from pgenrm_plugins.datasets.synthetic import row_key
    from pgenrm_plugins.scoring import Scorer
    from pgenrm_plugins.scoring.modes import check_criteria, criterion_digits

    bench = load_bench(data, strict=True)
    teacher = StatedTeacher(bench, load_truth(data))
    groups = bench.groups()
    histories = bench.histories("train")
    rows = bench.split("test")[:max_rows]
    wide = {"max_batch_rows": 128} if torch.cuda.is_available() else {}  # a GPU reads many rows at once
    scorer = Scorer({"backend": {"name": "transformers", "options": {"model": str(judge), **wide, **(options or {})}},
                     "sampling": {"chains": 1}, "reward": {"mode": "group"}})
    if scorer.criteria_mode != "synthesis":
        raise ValueError(f"{judge}: not a synthesis judge (its manifest reads criteria {scorer.criteria_mode!r})")
    view = scorer.config.reward.max_history
    try:
        requests = [{"user_id": r.user_id, "history": [h.model_dump() for h in histories.get(r.user_id, [])],
                     "prompt": [m.model_dump() for m in r.context],
                     "completions": [r.chosen.content, r.rejected.content]} for r in rows]
        results = scorer.score(requests)
        taught = {u: teacher.synthesis(u, teacher.pairs.get(u, [])[-view:], False) for u in {r.user_id for r in rows}}
        rc = scorer.config.reward
        ceiling = check_criteria(scorer.backend, [(scorer_request, chain.parse_synthesis(taught[r.user_id]).criteria)
                                                  for r, scorer_request in zip(rows, _validated(requests))],
                                 rc.max_chars, rc.criterion_first)
        attrs = {t["key"]: t for t in load_truth(data)["rows"]}
        asked = [(r.context, reply, criterion_name((a, side)), truth_attrs[a] == side)
                 for r in rows[:100] for reply, truth_attrs in _replies(r, attrs[row_key(r.model_dump(mode="json"))])
                 for a, side in CRITERIA]
        vocabulary_asked, vocabulary_right = _vocabulary(rows, histories, rc.verify_history or view)
        # one call: the test replies' checks are among the vocabulary's, and are asked once
        digits = criterion_digits(scorer.backend, [q[:3] for q in asked] + vocabulary_asked, rc.max_chars,
                                  rc.criterion_first)
        digits, by_vocabulary = digits[:len(asked)], vocabulary_right(digits[len(asked):])
    finally:
        scorer.close()
    right: dict[str, Counter] = defaultdict(Counter)
    recovery: Counter = Counter()
    seen = set()
    for r, result, best, vocabulary in zip(rows, results, ceiling, by_vocabulary):
        group = groups.get(r.user_id, "no_history")
        right[group]["pairs"] += 1
        right[group]["end_to_end"] += result.rewards[0] > result.rewards[1]
        right[group]["ceiling"] += best[0] is not None and best[1] is not None and best[0] > best[1]
        right[group]["vocabulary"] += vocabulary
        if r.user_id in seen or group == "no_history":
            continue
        seen.add(r.user_id)
        wanted, written = claims(taught[r.user_id]), claims(result.components.evaluation or "")
        recovery["users"] += 1
        recovery["unparsed"] += isinstance(chain.parse_synthesis(result.components.evaluation or ""), ParseFailure)
        for attribute, side in wanted.items():
            recovery["claimed"] += 1
            recovery["agree" if written.get(attribute) == side else "missed" if attribute not in written
                     else "wrong_side"] += 1
        recovery["unsupported"] += sum(a not in wanted for a in written)
    met = [d for (*_, m), d in zip(asked, digits) if m and d is not None]
    unmet = [d for (*_, m), d in zip(asked, digits) if not m and d is not None]
    checks = {"asked": len(asked), "accuracy": round(sum((d > 5) == m for (*_, m), d in zip(asked, digits)
                                                          if d is not None) / max(1, len(met) + len(unmet)), 4),
              "mean_digit_met": round(sum(met) / len(met), 3) if met else None,
              "mean_digit_unmet": round(sum(unmet) / len(unmet), 3) if unmet else None}
    by_group = {g: {"pairs": c["pairs"], **{k: round(c[k] / c["pairs"], 4) for k in ("end_to_end", "ceiling",
                                                                                   "vocabulary")}}
                for g, c in sorted(right.items())}
    total = sum(c["pairs"] for c in right.values())
    return {
        "data": str(data), "judge": str(judge), "pairs": total,
        "end_to_end": round(sum(c["end_to_end"] for c in right.values()) / total, 4),
        "ceiling": round(sum(c["ceiling"] for c in right.values()) / total, 4),
        "vocabulary": round(sum(c["vocabulary"] for c in right.values()) / total, 4),
        "by_group": by_group,
        "checks": checks,
        "recovery": {**recovery, "agreement": round(recovery["agree"] / recovery["claimed"], 4)
                     if recovery["claimed"] else None},
        "example": {"user": rows[0].user_id, "teacher": taught[rows[0].user_id],
                    "written": results[0].components.evaluation} if rows else None,
    }


def _vocabulary(rows, histories, view: int):
    """The checks that judge each test pair by the whole vocabulary, verified on the user's own view
    of `view` pairs, and the function that reads their digits into one right-or-wrong per pair."""
    from pgenrm_plugins.scoring.modes import combine, history_view
    from pgenrm_plugins.scoring.weighing import verify_criteria

    vocabulary = [Criterion(criterion_name(key), 10.0) for key in CRITERIA]
    vocabulary.append(chain.SOUND)
    views = {u: history_view(histories.get(u, []), view, 0, 0) for u in dict.fromkeys(r.user_id for r in rows)}
    asked = [(h.prompt, side, c.name) for history in views.values() for h in history for side in (h.chosen, h.rejected)
             for c in vocabulary]
    asked += [(r.context, reply, c.name) for r in rows for reply in (r.chosen.content, r.rejected.content)
              for c in vocabulary]

    def right(found: list[float | None]) -> list[bool]:
        digits = iter(found)
        weights = {}
        for user, history in views.items():
            separations = [list(zip(*[[next(digits) for _ in vocabulary] for _ in (0, 1)])) for _ in history]
            weights[user] = verify_criteria(vocabulary, separations)
        out = []
        for r in rows:
            chosen, rejected = (combine(weights[r.user_id], [next(digits) for _ in vocabulary]) for _ in (0, 1))
            out.append(chosen is not None and rejected is not None and chosen > rejected)
        return out

    return asked, right


def _replies(row, truth_row):
    return [(row.chosen.content, truth_row["chosen"]), (row.rejected.content, truth_row["rejected"])]


def _validated(requests):
    from pgenrm_plugins.types import ScoreRequest

    return [ScoreRequest.model_validate(r) for r in requests]


__all__ = ["evaluate_synthesis", "claims"]
