"""Parse the judge's evaluation chain into typed values, or say exactly why not.

The judge is often a tiny model, so its output is messy: the closing marker goes missing when
generation is cut off, the JSON has trailing commas or single quotes, weights do not add up to
100, totals are mis-added, scores leave the 1-10 scale. Throwing such chains away would waste
most of a small judge's output, so the parser repairs whatever has one obvious repair, records
each repair in `ParsedChain.repairs` (so callers can count and inspect them), and otherwise
returns a `ParseFailure` whose `detail` names the field at fault.

`parse_chain` never raises on model output: a reward model must keep scoring when the judge
babbles, so every unexpected error becomes a `ParseFailure("invalid_json", ...)`.

Decisions:
- The total is always recomputed from the per-criterion scores and the weights; the model's
  stated total is only compared with it, and a disagreement over 0.05 is noted.
- Criteria repeating a name (case- and whitespace-insensitive) are merged and their weights
  added: a JSON object can carry only one score per name anyway.
- Keys are matched case-insensitively ("Criteria" is read as "criteria", with a note).
- Preferences are informational: a non-object is kept as text under "summary", never a failure.
- Score keys are matched to the criteria by name, case- and whitespace-insensitively; scores for
  names that are not criteria are ignored with a note.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import json_repair

from pgenrm_plugins.chain.prompts import CLOSE, OPEN

# A chain is a few hundred tokens; anything longer is runaway generation, and json_repair is slow
# (about 1 s for 200k characters), so the text handled is capped.
MAX_CHARS = 200_000
# Deeper nesting would only ever be garbage, and would overflow the recursion of both JSON parsers.
MAX_DEPTH = 64
TOTAL_TOLERANCE = 0.05


@dataclass(frozen=True)
class Criterion:
    name: str
    weight: float  # normalised: the weights of a chain sum to 100.0


@dataclass(frozen=True)
class ResponseScores:
    per_criterion: dict[str, float]  # criterion name -> score in [1, 10]
    total: float  # sum(w * s) / sum(w) over the criteria, in [1, 10]


@dataclass(frozen=True)
class ParsedChain:
    preferences: dict[str, str]
    criteria: tuple[Criterion, ...]
    scores: dict[str, ResponseScores]  # label -> scores; empty when no labels were asked for
    repairs: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class PairVerdict:
    """A judge's scores for the two responses it was shown (`first` shown first), on its own scale;
    what every chain format's `parse_pair` returns (chain/formats.py)."""

    first: float
    second: float
    analysis: str = ""  # the user synthesis part of the chain (what a prototype build may embed)
    rationale: str = ""
    repairs: tuple[str, ...] = ()
    criteria: tuple[Criterion, ...] = ()


@dataclass(frozen=True)
class PointVerdict:
    """A judge's score for the one response it was shown, on 1-10 (the scorer maps it to [0, 1]),
    and the criteria it scored by; what a chain format's `parse_point` and `parse_scores` return."""

    score: float
    criteria: tuple[Criterion, ...] = ()
    repairs: tuple[str, ...] = ()


FailureKind = Literal["no_json", "invalid_json", "missing_field", "bad_value", "no_criteria"]


@dataclass(frozen=True)
class ParseFailure:
    kind: FailureKind
    detail: str
    text: str


class Fail(Exception):
    """Carries a failure out of nested validation, so each check can be one line."""

    def __init__(self, kind: FailureKind, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


MISSING = object()
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_PERCENT = r"%?"
OUT_OF_TEN = r"(?:/\s*10(?:\.0*)?)?"
_LABEL = re.compile(r"\s*(?:response\s*)?\[?\s*([a-z])\s*\]?\s*", re.IGNORECASE)


def parse_chain(
    text: str, *, labels: Sequence[str] = (), criteria: Sequence[Criterion] | None = None
) -> ParsedChain | ParseFailure:
    """Parse a chain; scores are required for `labels`, criteria from the text unless given."""
    raw = text if isinstance(text, str) else ""
    try:
        return _parse(raw, tuple(labels), None if criteria is None else tuple(criteria))
    except Fail as fail:
        return ParseFailure(fail.kind, fail.detail, raw)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises on model output"
        return ParseFailure("invalid_json", f"unexpected {type(exc).__name__}: {show(str(exc))}", raw)


def parse_criteria(text: str) -> ParsedChain | ParseFailure:
    """A criteria-only chain: preferences and criteria, no scores."""
    return parse_chain(text)


def _parse(text: str, labels: tuple[str, ...], given: tuple[Criterion, ...] | None) -> ParsedChain:
    repairs: list[str] = []
    obj = load_object(_extract(text, repairs), repairs)
    preferences = _preferences(obj, repairs)
    criteria = _given_criteria(given) if given is not None else _criteria(obj, repairs)
    scores = _scores(obj, labels, criteria, repairs) if labels else {}
    return ParsedChain(preferences, criteria, scores, tuple(repairs), text)


# --- finding the JSON ---------------------------------------------------------------------------


def _extract(text: str, repairs: list[str]) -> str:
    return extract_json(text, repairs, OPEN, CLOSE)


def extract_json(text: str, repairs: list[str], open_: str, close: str, want: Sequence[str] = ()) -> str:
    """The JSON object's text: from the last complete `open_`...`close` block if any (earlier blocks
    are usually an echo of the prompt's template), else from what the markers that exist allow.
    Without markers, the object holding the first of the `want` keys is taken when there is one
    (the analysis before it may contain braces)."""
    close_at = text.rfind(close)
    start = text.rfind(open_, 0, close_at) if close_at >= 0 else -1
    if start >= 0:
        body = text[start + len(open_) : close_at]
    elif (start := text.rfind(open_)) >= 0:
        repairs.append("closing marker missing")
        body = text[start + len(open_) :]
    elif close_at >= 0:
        repairs.append("opening marker missing")
        body = text[:close_at]
    else:
        repairs.append("markers missing")
        body = text
        keys = [at for w in want if (at := body.find(f'"{w}"')) >= 0]
        if keys and (brace := body.rfind("{", 0, min(keys))) >= 0:
            body = body[brace:]
    if "```" in body:
        repairs.append("code fences stripped")
        body = re.sub(r"```[\w-]*", "", body)
    brace = body.find("{")
    if brace < 0:
        raise Fail("no_json", "no JSON object found")
    body = body[brace:]
    if len(body) > MAX_CHARS:
        repairs.append(f"text cut to {MAX_CHARS} characters")
        body = body[:MAX_CHARS]
    end = _object_end(body)
    return body if end is None else body[:end]


def _object_end(s: str) -> int | None:
    """Index just past the object opening `s`, None if unbalanced (truncated); also bounds the
    nesting depth before any recursive parser sees the text."""
    depth, in_string, escaped = 0, False, False
    for i, ch in enumerate(s):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
            if depth > MAX_DEPTH:
                raise Fail("invalid_json", f"JSON nested deeper than {MAX_DEPTH} levels")
        elif ch in "}]":
            depth -= 1
            if depth <= 0:
                return i + 1
    return None


def load_object(body: str, repairs: list[str]) -> dict:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        obj = json_repair.loads(body)
        repairs.append("json repaired")
    if not isinstance(obj, dict):
        raise Fail("invalid_json", f"top level: expected a JSON object, got {type(obj).__name__}")
    if not obj:
        raise Fail("invalid_json", "top level: empty object")
    return obj


# --- fields -------------------------------------------------------------------------------------


def _preferences(obj: dict, repairs: list[str]) -> dict[str, str]:
    value = get_field(obj, "preferences", repairs)
    if value is MISSING or value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): _as_text(v) for k, v in value.items()}
    repairs.append(f"preferences given as {type(value).__name__}, kept as text")
    return {"summary": _as_text(value)}


def _criteria(obj: dict, repairs: list[str]) -> tuple[Criterion, ...]:
    value = get_field(obj, "criteria", repairs)
    if value is MISSING:
        raise Fail("missing_field", "criteria: missing")
    if isinstance(value, dict):
        repairs.append("criteria given as an object of name: weight")
        value = [{"name": k, "weight": w} for k, w in value.items()]
    if not isinstance(value, list):
        raise Fail("bad_value", f"criteria: expected a list, got {type(value).__name__}")
    if not value:
        raise Fail("bad_value", "criteria: empty")
    merged: dict[str, list] = {}  # key -> [name as first written, summed weight]
    for i, item in enumerate(value):
        where = f"criteria[{i}]"
        if not isinstance(item, dict):
            raise Fail("bad_value", f"{where}: expected an object, got {type(item).__name__}")
        name = get_field(item, "name", repairs)
        if name is MISSING:
            raise Fail("missing_field", f"{where}.name: missing")
        if not isinstance(name, str) or not name.strip():
            raise Fail("bad_value", f"{where}.name: expected a non-empty string, got {show(name)}")
        weight = get_field(item, "weight", repairs)
        if weight is MISSING:
            raise Fail("missing_field", f"{where}.weight: missing")
        w = to_number(weight, _PERCENT)
        if w is None or w <= 0:
            raise Fail("bad_value", f"{where}.weight: expected a positive number, got {show(weight)}")
        name = name.strip()
        if (key := _key(name)) in merged:
            repairs.append(f"duplicate criterion {name!r} merged")
            merged[key][1] += w
        else:
            merged[key] = [name, w]
    names = [name for name, _ in merged.values()]
    weights = _normalise([w for _, w in merged.values()], repairs)
    return tuple(Criterion(n, w) for n, w in zip(names, weights))


def _normalise(weights: list[float], repairs: list[str]) -> list[float]:
    total = sum(weights)
    if abs(total - 100.0) <= 1e-6:
        return weights
    # Divide by the largest first, so that huge weights cannot overflow the sum.
    largest = max(weights)
    if not math.isfinite(largest):
        raise Fail("bad_value", "criteria: weights too large")
    relative = [w / largest for w in weights]
    scale = sum(relative)
    repairs.append(f"weights renormalised from {_fmt(total)} to 100")
    return [100.0 * r / scale for r in relative]


def _given_criteria(given: tuple[Criterion, ...]) -> tuple[Criterion, ...]:
    if not given:
        raise Fail("bad_value", "criteria: none given")
    for c in given:
        if (isinstance(c.weight, bool) or not isinstance(c.weight, (int, float)) or not math.isfinite(c.weight)
                or c.weight <= 0):
            raise Fail("bad_value", f"criteria: given weight of {c.name!r} is not positive")
    return given


def _scores(obj: dict, labels: tuple[str, ...], criteria: tuple[Criterion, ...],
            repairs: list[str]) -> dict[str, ResponseScores]:
    value = get_field(obj, "scores", repairs)
    if value is MISSING:
        raise Fail("missing_field", "scores: missing")
    if not isinstance(value, dict):
        raise Fail("bad_value", f"scores: expected an object, got {type(value).__name__}")
    by_letter: dict[str | None, tuple[str, Any]] = {}  # "Response A", "a", ... -> "A"; first wins
    for key, entry in value.items():
        by_letter.setdefault(_label(key), (key, entry))
    out = {}
    for label in labels:
        if label in value:
            entry = value[label]
        elif (hit := by_letter.get(_label(label) or label)) is not None:
            repairs.append(f"label {hit[0]!r} read as {label!r}")
            entry = hit[1]
        else:
            raise Fail("missing_field", f"scores.{label}: missing")
        out[label] = _response_scores(label, entry, criteria, repairs)
    return out


def _response_scores(label: str, entry: Any, criteria: tuple[Criterion, ...], repairs: list[str]) -> ResponseScores:
    where = f"scores.{label}"
    if not isinstance(entry, dict):
        if to_number(entry, OUT_OF_TEN) is not None:
            raise Fail("missing_field", f"{where}.per_criterion: missing (only a total was given)")
        raise Fail("bad_value", f"{where}: expected an object, got {type(entry).__name__}")
    per = get_field(entry, "per_criterion", repairs)
    for alternative in ("criteria_scores", "scores"):  # the reference prompt used both names
        if per is not MISSING:
            break
        per = get_field(entry, alternative, repairs)
        if per is not MISSING:
            repairs.append(f"{where}: key {alternative!r} read as 'per_criterion'")
    if per is MISSING:
        raise Fail("missing_field", f"{where}.per_criterion: missing")
    if not isinstance(per, dict):
        raise Fail("bad_value", f"{where}.per_criterion: expected an object, got {type(per).__name__}")
    written: dict[str, tuple[str, Any]] = {}
    for name, v in per.items():
        written.setdefault(_key(str(name)), (str(name), v))
    result: dict[str, float] = {}
    for c in criteria:
        hit = written.get(_key(c.name))
        if hit is None:
            raise Fail("missing_field", f"{where}.per_criterion.{c.name}: missing")
        s = to_number(hit[1], OUT_OF_TEN)
        if s is None:
            raise Fail("bad_value",
                        f"{where}.per_criterion.{c.name}: expected a number from 1 to 10, got {show(hit[1])}")
        if not 1.0 <= s <= 10.0:
            clamped = min(10.0, max(1.0, s))
            repairs.append(f"score of {label}/{c.name} clamped from {_fmt(s)} to {_fmt(clamped)}")
            s = clamped
        result[c.name] = s
    known = {_key(c.name) for c in criteria}
    for key, (name, _) in written.items():
        if key not in known:
            repairs.append(f"score of {label}/{name} ignored (not a criterion)")
    total = sum(c.weight * result[c.name] for c in criteria) / sum(c.weight for c in criteria)
    total = min(10.0, max(1.0, total))  # float rounding must not leave the scale
    stated = get_field(entry, "total", repairs)
    if stated is MISSING:
        repairs.append(f"total of {label} computed (model gave none)")
    else:
        said = to_number(stated, OUT_OF_TEN)
        if said is None or abs(said - total) > TOTAL_TOLERANCE:
            shown = _fmt(said) if said is not None else show(stated)
            repairs.append(f"total of {label} recomputed (model said {shown}, criteria give {_fmt(total)})")
    return ResponseScores(result, total)


# --- small helpers ------------------------------------------------------------------------------


def get_field(obj: dict, name: str, repairs: list[str]) -> Any:
    """obj[name], also under a differently cased or padded key (noted); MISSING when absent."""
    if name in obj:
        return obj[name]
    for key, value in obj.items():
        if isinstance(key, str) and key.strip().casefold() == name:
            repairs.append(f"key {show(key)} read as {name!r}")
            return value
    return MISSING


def to_number(value: Any, suffix: str) -> float | None:
    """A finite float from a JSON number or a numeric string with `suffix` ("40%", "7/10");
    None otherwise. Booleans are ints in Python but never a score or a weight."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            x = float(value)
        except OverflowError:  # an int beyond float range
            return None
    elif isinstance(value, str) and len(value) <= 100:
        match = re.fullmatch(rf"\s*({_NUMBER})\s*{suffix}\s*", value)
        if match is None:
            return None
        x = float(match.group(1))
    else:
        return None
    return x if math.isfinite(x) else None


def _label(key: Any) -> str | None:
    """"A", "a", "Response A", "[A]" -> "A"; None for anything else."""
    match = _LABEL.fullmatch(key) if isinstance(key, str) and len(key) <= 100 else None
    return match.group(1).upper() if match else None


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _fmt(x: float) -> str:
    return f"{x:g}"


def show(value: Any) -> str:
    try:
        text = _fmt(value) if isinstance(value, float) else repr(value)
    except ValueError:  # an int too long to print (Python's digit limit)
        text = "<huge number>"
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["Criterion", "ResponseScores", "ParsedChain", "ParseFailure", "FailureKind", "parse_chain", "parse_criteria"]
