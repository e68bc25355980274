"""Every setting, as pydantic models. One YAML (or TOML) file drives the CLI, the service and the
adapters; with no file at all the embedded default (SmolLM2-135M judge on CPU) is used.

Unknown keys and bad values are errors that name the key, e.g.
`reward.mode: Input should be 'pairwise', 'pointwise' or 'group'`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from pgenrm_plugins import plugins

CONFIG_ENV = "PGENRM_CONFIG"


class ConfigError(ValueError):
    """A config that cannot be used; the message names each bad key and why."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PluginChoice(StrictModel):
    """`name` picks a registered plugin; `options` is validated by that plugin's own options model."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    def build(self, kind: str):
        entry = plugins.get(kind, self.name)
        options = entry.options.model_validate(self.options) if entry.options else self.options
        return entry.factory(options)


class BackendConfig(PluginChoice):
    name: str = "transformers"


class EmbedderConfig(PluginChoice):
    name: str = "minilm"


class StoreConfig(PluginChoice):
    name: str = "sqlite"


class SamplingConfig(StrictModel):
    """How evaluation chains are sampled. `chains` is N of individual-level scaling."""

    chains: int = Field(4, ge=1, le=64)
    temperature: float = Field(0.9, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=8, le=8192)
    seed: int = 0


CriterionName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class RewardConfig(StrictModel):
    """How chains become one reward per completion (all rewards lie in [0, 1]).

    mode:
      pairwise  - each completion against the request's `reference` (the paper's form);
                  reward = completion total / (completion total + reference total).
      tournament - each completion against the other completions of its request (a GRPO group),
                  both orders by default; reward = its mean share (or win rate) over its
                  comparisons. For judges that can only compare two responses (docs/p-genrm-8b.md).
      pointwise - one chain per completion; reward = weighted total mapped to [0, 1].
      group     - persona and criteria once per (user, prompt), every completion scored against
                  them; reward = weighted total mapped to [0, 1]. Default: fastest, and
                  group-relative advantages (GRPO, RLOO) only need scores comparable in a group.
    reader:
      logprob   - read each criterion's score as the expected value of the judge's first reply
                  token over the digits 1-9 (no parse failures, one forward pass, no sampling).
      parse     - generate the scores as JSON and parse them.
      auto      - logprob where the backend exposes token probabilities, else parse.
    criteria (group mode):
      generated - the judge writes persona and weighted criteria once per (user, prompt) and every
                  completion is scored against each criterion (the paper's chain).
      none      - no chain: each completion gets one digit right after the history and the
                  conversation (`prompts.direct_question`); Ind-N reads N seeded orderings of the
                  history instead of N sampled chains. Judge J's format (embedded:smollm2-135m-direct-v1).
      synthesis - the judge writes the user's persona and weighted criteria once per user and
                  history version (cached, no conversation in it); each completion is then checked
                  against each criterion in a short context with no history, one digit read by
                  probability, and the weights combine them (chain/synthesis.py). Ind-N reads N
                  syntheses. The embedded default judge's format.
      auto      - what the judge was trained for (its manifest), else `generated`.
    compare (criteria none): each completion is judged against every other completion of its
      request, both orders, one digit per ordered pair ("A over B"); its reward is its mean share.
      A lone completion is compared with the request's `reference`.
    history_render: `full` shows each past pair whole; `contrast` shows only what the chosen and
      the rejected response do not share (and compared replies the same way).
    pair_order (pairwise, tournament): how the two responses of a comparison are shown: `fixed`
      (the scored completion first), `both` (each comparison in both orders), `shuffled` (one
      order, seeded by the content, recorded as `position_swaps`); `auto`: fixed for pairwise with
      the `pgenrm` format, shuffled for pairwise with a pairwise-only format, both for tournament.
    pair_score (tournament): `share` (score / sum of both scores) or `win` (1, 0, a tie 0.5).
    opponents (tournament): at most about this many opponents per completion (0: all others).
    failure_policy:
      raise     - a completion whose chains all failed raises `ScoringError`.
      neutral   - it gets `neutral_value`, and the failure is counted in the components.
    """

    mode: Literal["pairwise", "pointwise", "group", "tournament"] = "group"
    reader: Literal["auto", "logprob", "parse"] = "auto"
    criteria: Literal["auto", "generated", "none", "synthesis"] = "auto"
    failure_policy: Literal["raise", "neutral"] = "neutral"
    neutral_value: float = Field(0.5, ge=0.0, le=1.0)
    max_history: int = Field(8, ge=0, le=256, description="most recent history pairs shown to the judge")
    max_chars: int = Field(1500, ge=64, description="longer texts are cut to this many characters")
    history_render: Literal["full", "contrast"] = Field(
        "full", description="history pairs in full, or only where chosen and rejected differ (see prompts.contrast)")
    verify: bool = Field(True, description="criteria synthesis: weigh each written criterion by how it separates "
                                           "the user's own past choices (signed: a criterion their choices go "
                                           "against counts against a reply that meets it)")
    verify_history: int = Field(0, ge=0, le=256, description="criteria synthesis: how many of the user's most "
                                                             "recent past pairs verify the criteria (0: the pairs "
                                                             "the synthesis was written from); checked once per "
                                                             "user and history, cached with the synthesis")
    extra_criteria: list[CriterionName] = Field(
        default_factory=list, description="criteria synthesis with reward.verify: criteria checked for every user "
        "besides those the synthesis writes, each weighed by the user's own past choices like a written one (none "
        "without history); a trained judge's manifest lists the ones its checks learnt")
    criterion_first: bool = Field(False, description="criteria synthesis: name the criterion before the reply "
                                                     "in a check (as the judge was trained; its manifest says)")
    compare: bool = Field(False, description="criteria none: judge each completion against each other one of its "
                                             "request (both orders) instead of alone")
    pair_order: Literal["auto", "fixed", "both", "shuffled"] = "auto"
    pair_score: Literal["share", "win"] = "share"
    opponents: int = Field(0, ge=0, description="tournament: about this many opponents per completion; 0 = all")


class PrototypeConfig(StrictModel):
    """Prototype-level scaling: score with the top-k most similar users of the nearest prototype."""

    enabled: bool = False
    top_k: int = Field(4, ge=1, le=64)
    c_self: float = Field(0.5, ge=0.0)
    c_neighbours: float = Field(0.5, ge=0.0)
    max_history: int | None = Field(None, ge=1, description="history pairs of each side's chains under prototype "
                                                            "scaling (the P-GenRM-8B scripts: 3); none: all")

    @model_validator(mode="after")
    def _some_weight(self) -> "PrototypeConfig":
        if self.enabled and self.c_self + self.c_neighbours <= 0:
            raise ValueError("c_self and c_neighbours are both 0: give at least one side a positive weight")
        return self


class ChainConfig(StrictModel):
    """Which chain format the judge was trained on: its prompts and its parser (chain/formats.py;
    `pgenrm plugins --kind chain_format` lists them)."""

    format: str = Field("pgenrm", description="pgenrm (this project's chain) or p-genrm-8b (the released judges)")


class RemoteScorerConfig(StrictModel):
    """Score through a running `pgenrm serve` instead of building a judge (scoring/remote.py).
    The service itself ignores this section, so one config file drives the service and the adapters."""

    url: str = Field(description="the service, e.g. http://127.0.0.1:8017")
    api_key_env: str = Field("PGENRM_API_KEY", description="environment variable holding the bearer token")
    timeout_s: float = Field(600.0, gt=0, description="per call; below the framework's own timeout")
    max_retries: int = Field(4, ge=0, description="retries of an unreachable or 5xx service, with backoff")
    backoff_s: float = Field(0.5, ge=0, description="wait before retry i is backoff_s * 2**i")


class PGenRMConfig(StrictModel):
    scorer: RemoteScorerConfig | None = None
    backend: BackendConfig = Field(default_factory=BackendConfig)
    chain: ChainConfig = Field(default_factory=ChainConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    prototypes: PrototypeConfig = Field(default_factory=PrototypeConfig)
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    store: StoreConfig | None = None


def _describe(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {prefix}{loc}: {e['msg']}")
    return "\n".join(lines)


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml", ".json"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"{path}: config must be .yaml, .yml, .json or .toml")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (backend, sampling, ...)")
    return data


def config_dict(source: str | os.PathLike | dict | PGenRMConfig | None = None) -> dict[str, Any]:
    """`load_config(source)` as a dict of what it sets, for a scorer built from it elsewhere (a Ray
    replica, a benchmark's setup): a judge's manifest fills in only the keys a config leaves unset
    (backends/judge_folder.py), and a full dump would set them all."""
    return load_config(source).model_dump(mode="json", exclude_unset=True)


def load_config(source: str | os.PathLike | dict | PGenRMConfig | None = None) -> PGenRMConfig:
    """A config from a file path, a dict, or nothing (then `$PGENRM_CONFIG`, else the defaults)."""
    if isinstance(source, PGenRMConfig):
        _check_prototype_store(source, "config")
        return source
    where = "config"
    if source is None:
        source = os.environ.get(CONFIG_ENV) or {}
        if source:
            where = f"{source} (from ${CONFIG_ENV})"
    if not isinstance(source, dict):
        path = Path(source)
        where = where if where != "config" else str(path)
        source = _read_file(path)
    try:
        config = PGenRMConfig.model_validate(source)
    except ValidationError as exc:
        raise ConfigError(f"invalid config in {where}:\n{_describe(exc)}") from None
    # The chosen backend validates its own options now, so a typo in `backend.options` fails at
    # load time, not when the judge is first called.
    try:
        entry = plugins.get("backend", config.backend.name)
    except plugins.UnknownPluginError as exc:
        raise ConfigError(f"invalid config in {where}:\n  backend.name: {exc}") from None
    if entry.options is not None:
        try:
            entry.options.model_validate(config.backend.options)
        except ValidationError as exc:
            raise ConfigError(f"invalid config in {where}:\n{_describe(exc, 'backend.options.')}") from None
    _check_prototype_store(config, where)
    return config


def _check_prototype_store(config: PGenRMConfig, where: str) -> None:
    if config.prototypes.enabled and config.store is None:
        raise ConfigError(
            f"invalid config in {where}:\n  store: prototypes.enabled is true but no store is configured; add "
            "`store: {name: sqlite, options: {path: prototypes.sqlite}}` (a store built with `pgenrm prototypes "
            "build`), or set prototypes.enabled: false"
        )
