"""Personalized pairwise accuracy on PersonalRewardBench rows (`pgenrm bench accuracy`).

For every test row (user, context, chosen, rejected) the judge scores both responses, twice: with
the chosen response shown first and shown second. A judgement is *correct* when the chosen
response gets the higher reward; a tie or a failure (no chain produced a score) is a judgement
that is not correct, and stays in the denominator. Accuracy = correct / all judgements.

How the two responses are compared depends on the reward mode (default: the config's):
- `group` (the project's default reward): one criteria chain per (user, prompt), each response
  scored against those criteria, rewards compared. The responses never share a chain, so the order
  cannot matter by construction; both orders are still run (the second is a cache hit) so the
  position-bias column is measured, not assumed.
- `pairwise` (the paper's form): one chain shows both responses (A, B); chosen wins when its share
  of the two totals is above one half. Here order can matter, and the bias column shows how much.
- `pointwise`: one chain per response, totals compared.

Settings (`--settings`, comma separated), in the paper's terms:
    no-history        the judge sees no history (non-personalized)
    global-history    every user gets the same history: pairs pooled across users (one global preference)
    ind-N             the user's own history, N sampled chains (ind-1 = history only)
    ind-N+pro-K       and prototype-level scaling with the top-K neighbours (needs --store)
A suffix picks the mode or reader for one setting: `ind-4:parse`, `ind-1:pairwise`; `:persona`
shows the judge each user's stated preferences too, where the data has them (a users file next to
the rows, or the rows' persona fields), as a request that carries a persona does: `ind-1:persona`.

With the synthetic users' truth file next to the data, reference predictors that read the latent
attributes instead of the text are reported too: `oracle` (each user's true weights: the ceiling,
below 100% because users choose with noise), `attr-user` (the user's own train pairs fitted as
`reward.verify` weighs criteria: the synthesis judge with a perfect check step), `attr-user+pro-8`
(that fit pulled toward the 8 users whose fits best explain the user's pairs: what prototypes can
add), `attr-global` (one fit on everyone's train pairs: the best single global taste) and
`types-view` (predictors.py).

The confidence intervals are 95% percentile bootstraps that resample *users* (a user's rows share
one history and are not independent), 2000 resamples, seeded.

The parts: `settings` (the grammar and `--store`), `stats` (the per-user bootstrap), `predictors`
(the reference predictors), `report` (report.md, the plots, the printed table) and `run`
(`run_accuracy`, step by step).
"""

from pgenrm_plugins.bench.accuracy.predictors import contrast_overlap, reference_predictors
from pgenrm_plugins.bench.accuracy.report import METHOD_NOTE, markdown, plot, print_summary, write_report
from pgenrm_plugins.bench.accuracy.run import global_history, judgement, run_accuracy
from pgenrm_plugins.bench.accuracy.settings import (
    DEFAULT_PROTOTYPE_SETTINGS,
    DEFAULT_SETTINGS,
    MODES,
    READERS,
    AccuracyError,
    Setting,
    parse_setting,
    parse_settings,
    store_config,
)
from pgenrm_plugins.bench.accuracy.stats import BOOTSTRAP, bootstrap_ci, summarize

__all__ = [
    "BOOTSTRAP", "DEFAULT_PROTOTYPE_SETTINGS", "DEFAULT_SETTINGS", "METHOD_NOTE", "MODES", "READERS",
    "AccuracyError", "Setting", "bootstrap_ci", "contrast_overlap", "global_history", "judgement", "markdown",
    "parse_setting", "parse_settings", "plot", "print_summary", "reference_predictors", "run_accuracy", "store_config",
    "summarize", "write_report",
]
