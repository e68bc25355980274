"""What gets embedded to place a user among the prototypes, shared by the builder and the scorer
(a user placed at scoring time must be embedded exactly as the build embedded its members).

Four sources, recorded in each build's meta (`source`, `source_settings`):

- `synthesis` (the paper's): the judge writes the user's preference synthesis (preferences and the
  criteria they apply in general, `prompts.synthesis_chain`), greedily, and that text is embedded.
- `history` (no judge, `--skip-judge`): each past choice is embedded as "prompt + preferred reply"
  and the user is the normalised mean of those vectors. One vector per choice, because a single
  text of all choices would be cut at the embedder's token limit (256 for MiniLM) after the first.
- `analysis` (the released P-GenRM-8B pipeline's): the judge compares the user's latest choice in
  the chain format `chain_format` (default `p-genrm-8b`), greedily, with the earlier choices as
  history, and the chain's user analysis (PART 1, `ChainFormat.analysis`) is embedded.
- `contrast` (no judge): each past choice is the difference of two embeddings, of what only the
  preferred response says and of what only the rejected one says (`prompts.contrast`), and the
  user is the normalised mean of those differences. The topic both responses share cancels out,
  and what is left is the direction the user chooses in: on 60 synthetic held-out users, a user's
  4 nearest neighbours were of the same latent type 41% of the time, against 20% for `history`
  and 19% by chance (MiniLM, measured 2026-12-02; docs/training.md).

A user with no history at all (cold start) is placed by what the request does carry: the persona
when given, else the current prompt. It is a weaker signal, so such users are scored by their
prototype's members alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from pgenrm_plugins.backends.base import GenerationRequest
from pgenrm_plugins.chain import prompts
from pgenrm_plugins.chain.parser import ParseFailure, parse_criteria
from pgenrm_plugins.types import HistoryItem, Prompt

if TYPE_CHECKING:
    from pgenrm_plugins.backends.base import Backend
    from pgenrm_plugins.prototypes.base import Embedder

SOURCES = ("synthesis", "history", "contrast", "analysis")
JUDGE_SOURCES = ("synthesis", "analysis")  # the sources that need the judge (a backend)


@dataclass(frozen=True)
class SourceSettings:
    """How the users' texts were made; stored in the build so scoring-time placement matches it."""

    max_items: int = 6  # most recent past choices shown to the judge / embedded
    max_chars: int = 300  # each text cut to this many characters
    max_new_tokens: int = 96  # the synthesis's token budget
    seed: int = 0
    # syntheses per backend call: an embedded judge attends over every row of a call at once, and
    # long histories in big batches cost memory quadratic in their length
    judge_batch: int = 4
    chain_format: str = "p-genrm-8b"  # the `analysis` source's format (the CLI: the config's chain.format)

    def as_meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None) -> "SourceSettings":
        known = {k: v for k, v in (meta or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Synthesis:
    text: str
    parsed: bool  # False: the judge's reply was not valid JSON and its raw text is used


def render_synthesis(raw: str) -> Synthesis:
    """The synthesis as plain sentences (what is embedded); the raw reply when it cannot be parsed."""
    parsed = parse_criteria(raw)
    if isinstance(parsed, ParseFailure):
        text = raw.replace(prompts.OPEN, " ").replace(prompts.CLOSE, " ").strip()
        return Synthesis(text, False)
    lines = [f"{key.capitalize()}: {value}" for key, value in parsed.preferences.items() if str(value).strip()]
    if parsed.criteria:
        lines.append("Criteria: " + ", ".join(f"{c.name} ({c.weight:g})" for c in parsed.criteria))
    return Synthesis("\n".join(lines), True)


def synthesize(backend: Backend, users: Sequence[tuple[Sequence[HistoryItem], str | None]],
               settings: SourceSettings) -> list[Synthesis]:
    """One preference synthesis per (history, persona), all in one backend call. Greedy, so a
    rebuild writes the same text."""
    requests = [
        GenerationRequest(
            prompts.synthesis_chain(history, persona, max_items=settings.max_items, max_chars=settings.max_chars),
            n=1, max_new_tokens=settings.max_new_tokens, temperature=0.0, seed=settings.seed,
            stop=(prompts.CLOSE,), prefill=prompts.CHAIN_PREFILL,
        )
        for history, persona in users
    ]
    return [render_synthesis(text) for text in _generate(backend, requests, settings)]


def _generate(backend: Backend, requests: list[GenerationRequest], settings: SourceSettings) -> list[str]:
    """The one reply to each request, `settings.judge_batch` requests per backend call."""
    step = max(1, settings.judge_batch)
    return [gens[0].text for start in range(0, len(requests), step)
            for gens in backend.generate(requests[start:start + step])]


def analyse(backend: Backend, users: Sequence[tuple[Sequence[HistoryItem], str | None]],
            settings: SourceSettings) -> list[Synthesis]:
    """One chain per user in `settings.chain_format`, judging the user's latest choice with the
    earlier ones as history; its analysis part is what gets embedded. Greedy, like `synthesize`."""
    from pgenrm_plugins.chain.formats import chain_format

    fmt = chain_format(settings.chain_format)
    requests = []
    for i, (history, persona) in enumerate(users):
        if not history:
            raise ValueError(f"user {i} has no history: nothing to analyse for the `analysis` source")
        *earlier, latest = history
        messages = fmt.pair_messages(earlier, persona, latest.prompt, latest.chosen, latest.rejected,
                                     max_items=settings.max_items, max_chars=settings.max_chars)
        requests.append(GenerationRequest(messages, n=1, max_new_tokens=settings.max_new_tokens, temperature=0.0,
                                          seed=settings.seed, stop=fmt.stop, prefill=fmt.prefill))
    return [Synthesis(fmt.analysis(text), not isinstance(fmt.parse_pair(text), ParseFailure))
            for text in _generate(backend, requests, settings)]


def prompt_text(prompt: Prompt, max_chars: int) -> str:
    return prompts.render_prompt(prompt, max_chars)


def history_texts(history: Sequence[HistoryItem], persona: str | None, settings: SourceSettings) -> list[str]:
    """The texts a `history`-source user is the mean of: persona, then each recent choice."""
    clip = settings.max_chars
    texts = [f"Persona: {persona[:clip]}"] if persona else []
    for item in list(history)[-settings.max_items:] if settings.max_items else []:
        texts.append(f"{prompt_text(item.prompt, clip)}\nPreferred: {item.chosen[:clip]}")
    return texts


def embed_history_users(embedder: Embedder, users: Sequence[tuple[Sequence[HistoryItem], str | None]],
                        settings: SourceSettings) -> np.ndarray:
    """[len(users), dim]: each user's normalised mean over their history texts (one embed call)."""
    per_user = [history_texts(h, p, settings) for h, p in users]
    for i, texts in enumerate(per_user):
        if not texts:
            raise ValueError(f"user {i} has neither history nor persona: nothing to embed for the `history` source")
    flat = [t for texts in per_user for t in texts]
    vectors = embedder.embed(flat)
    out, start = [], 0
    for texts in per_user:
        mean = vectors[start:start + len(texts)].mean(0)
        start += len(texts)
        out.append(mean / np.linalg.norm(mean))
    return np.asarray(out, dtype=np.float32).reshape(len(users), -1)


def contrast_texts(item: HistoryItem, clip: int) -> tuple[str, str]:
    """What only the preferred and what only the rejected response says; two unrelated responses
    (no contrast) are their whole texts."""
    shown = prompts.contrast(item.chosen, item.rejected)
    if shown is None:
        return item.chosen[:clip], item.rejected[:clip]
    return (" ".join(shown[0]) or "(nothing)")[:clip], (" ".join(shown[1]) or "(nothing)")[:clip]


def embed_contrast_users(embedder: Embedder, users: Sequence[tuple[Sequence[HistoryItem], str | None]],
                         settings: SourceSettings) -> np.ndarray:
    """[len(users), dim]: each user's normalised mean over their recent choices of
    e(only the preferred) - e(only the rejected) (one embed call); a persona-only user is the
    persona's own vector."""
    sides: list[str] = []
    spans: list[tuple[int, int, str | None]] = []
    for i, (history, persona) in enumerate(users):
        recent = list(history)[-settings.max_items:] if settings.max_items else []
        if not recent and not persona:
            raise ValueError(f"user {i} has neither history nor persona: nothing to embed for the `contrast` source")
        start = len(sides)
        for item in recent:
            sides += contrast_texts(item, settings.max_chars)
        spans.append((start, len(sides), None if recent else f"Persona: {persona[:settings.max_chars]}"))
    personas = [p for _, _, p in spans if p is not None]
    vectors = embedder.embed(sides + personas) if sides or personas else np.zeros((0, 0), dtype=np.float32)
    out, next_persona = [], len(sides)
    for start, end, persona in spans:
        if persona is not None:
            v, next_persona = vectors[next_persona], next_persona + 1
        else:
            v = (vectors[start:end:2] - vectors[start + 1:end:2]).mean(0)
        norm = float(np.linalg.norm(v))
        out.append(v / norm if norm > 0 else v)
    return np.asarray(out, dtype=np.float32).reshape(len(users), -1)


def embed_users(
    embedder: Embedder, source: str, users: Sequence[tuple[Sequence[HistoryItem], str | None]],
    settings: SourceSettings, backend: Backend | None = None,
) -> tuple[np.ndarray, list[Synthesis | None]]:
    """Embeddings of users (history, persona) from `source`, and their syntheses (None for `history`)."""
    if source == "history":
        return embed_history_users(embedder, users, settings), [None] * len(users)
    if source == "contrast":
        return embed_contrast_users(embedder, users, settings), [None] * len(users)
    if source not in JUDGE_SOURCES:
        raise ValueError(f"unknown embedding source {source!r}; known: {', '.join(SOURCES)}")
    if backend is None:
        raise ValueError(f"the `{source}` source needs the judge (a backend)")
    syntheses = (synthesize if source == "synthesis" else analyse)(backend, users, settings)
    texts = [s.text or " ".join(history_texts(h, p, settings)) for s, (h, p) in zip(syntheses, users)]
    return embedder.embed(texts), list(syntheses)


def check_embedder(prototypes, embedder: Embedder) -> None:
    """A store is only searched with the embedder that built it (other embedders' spaces differ)."""
    if embedder.name != prototypes.embedder:
        raise ValueError(
            f"the store was built with embedder {prototypes.embedder!r}, but the config's embedder is "
            f"{embedder.name!r}: set embedder.name/options in the config to the store's embedder, or rebuild the store"
        )


def embed_like_build(prototypes, embedder: Embedder, users: Sequence[tuple[Sequence[HistoryItem], str | None]],
                     backend: Backend | None = None):
    """Embed users (history, persona) the way the current build embedded its members."""
    check_embedder(prototypes, embedder)
    meta = prototypes.meta or {}
    settings = SourceSettings.from_meta(meta.get("source_settings"))
    return embed_users(embedder, meta.get("source", "history"), users, settings, backend=backend)
