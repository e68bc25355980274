"""pgenrm-plugins: P-GenRM, a personalized generative reward model, for TRL, verl and OpenRLHF.

    from pgenrm_plugins import load_scorer
    scorer = load_scorer()            # embedded SmolLM2 judge on CPU; or a YAML/TOML path or dict
    [result] = scorer.score([{"user_id": "u1", "history": [...], "prompt": "...", "completions": [...]}])
    result.rewards, result.components
"""

from pgenrm_plugins.hookspecs import hookimpl

__all__ = ["hookimpl", "load_scorer", "Scorer", "ScoringError", "ScoreRequest", "ScoreResult", "load_config"]


def __getattr__(name):
    # The public API loads lazily so that `import pgenrm_plugins` (plugins do it for `hookimpl`)
    # stays cheap.
    if name in ("load_scorer", "Scorer", "ScoringError"):
        from pgenrm_plugins import scoring

        return getattr(scoring, name)
    if name in ("ScoreRequest", "ScoreResult"):
        from pgenrm_plugins import types

        return getattr(types, name)
    if name == "load_config":
        from pgenrm_plugins.config import load_config

        return load_config
    raise AttributeError(name)
