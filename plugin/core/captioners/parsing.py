"""Turn whatever a VLM wrote into `CaptionVariant`s, never losing the text.

Models answer in JSON when asked (sometimes inside ```json fences, with prose before it or
trailing junk after it), sometimes with field headings ("One sentence:", "**Feature:**"), and
sometimes in free text. Each form is tried in that order; free text is the fallback, so any
non-empty answer yields a caption.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from ..types import CaptionVariant

_FIELD_ALIASES = {
    "one_sentence": "one_sentence", "onesentence": "one_sentence", "one_sentence_caption": "one_sentence",
    "sentence": "one_sentence", "summary": "one_sentence", "short_caption": "one_sentence", "title": "one_sentence",
    "feature": "feature", "features": "feature", "objects": "feature", "key_features": "feature",
    "caption": "caption", "detailed_caption": "caption", "description": "caption", "detailed_description": "caption",
    "paragraph": "caption", "details": "caption",
}

_HEADING = re.compile(
    r"(?im)^[ \t>#*\-\d.]*(?:\*\*|__)?[ \t]*"
    r"(one[ \t_-]*sentence(?:[ \t_-]*caption)?|summary|features?|key[ \t_-]*features|"
    r"detailed[ \t_-]*caption|caption|description|detailed[ \t_-]*description)"
    r"[ \t]*(?:\*\*|__)?[ \t]*(?:[:\-–]|(?=[ \t]*(?:\*\*|__)?[ \t]*$))[ \t]*(?:\*\*|__)?"
)

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def _norm_key(key: str) -> Optional[str]:
    k = re.sub(r"[^a-z]+", "_", str(key).lower()).strip("_")
    return _FIELD_ALIASES.get(k) or _FIELD_ALIASES.get(k.replace("_", ""))


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "; ".join(_as_text(v) for v in value if _as_text(v))
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_as_text(v)}" for k, v in value.items() if _as_text(v))
    return " ".join(str(value).split())


def _from_mapping(d: dict[str, Any]) -> Optional[CaptionVariant]:
    fields = {"one_sentence": "", "feature": "", "caption": ""}
    for key, value in d.items():
        name = _norm_key(key)
        if name and not fields[name]:
            fields[name] = _as_text(value)
    if not any(fields.values()):
        return None
    return CaptionVariant(**fields)


def _json_objects(text: str) -> list[Any]:
    """Every JSON value that starts at a '{' or '[' in `text` (fenced blocks first), trailing junk ignored."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    dec = json.JSONDecoder()
    for cand in candidates:
        for i, ch in enumerate(cand):
            if ch not in "{[":
                continue
            try:
                value, _end = dec.raw_decode(cand[i:])
            except ValueError:
                continue
            if isinstance(value, (dict, list)):
                return [value]
    return []


def _from_json(text: str) -> list[CaptionVariant]:
    out: list[CaptionVariant] = []
    for value in _json_objects(text):
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                # {"variants": [...]} or {"captions": [...]} wrappers.
                nested = [v for v in item.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
                if nested and not _from_mapping({k: v for k, v in item.items() if not isinstance(v, list)}):
                    out.extend(v for x in nested[0] if (v := _from_mapping(x)))
                    continue
                v = _from_mapping(item)
                if v:
                    out.append(v)
    return out


def _from_headings(text: str) -> Optional[CaptionVariant]:
    marks = list(_HEADING.finditer(text))
    if not marks:
        return None
    fields = {"one_sentence": "", "feature": "", "caption": ""}
    for i, m in enumerate(marks):
        name = _norm_key(m.group(1))
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = _clean(text[m.end() : end])
        if name and body and not fields[name]:
            fields[name] = body
    if not any(fields.values()):
        return None
    lead = _clean(text[: marks[0].start()])
    if lead and not fields["one_sentence"]:
        fields["one_sentence"] = lead  # prose before the first heading is kept, not dropped
    return CaptionVariant(**fields)


def _clean(text: str) -> str:
    text = re.sub(r"[*_`#]+", " ", text)
    return " ".join(text.split()).strip(' "\'')


def _first_sentence(text: str) -> str:
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    return m.group(1) if m else text


def parse_variants(text: str) -> list[CaptionVariant]:
    """All caption variants found in one answer; [] only when the answer holds no text at all."""
    text = (text or "").strip()
    if not text:
        return []
    found = _from_json(text)
    if found:
        return found
    v = _from_headings(text)
    if v:
        return [v]
    plain = _clean(_FENCE.sub(lambda m: m.group(1), text))
    if not plain:
        return []
    return [CaptionVariant(one_sentence=_first_sentence(plain), feature="", caption=plain)]


def parse_variant(text: str) -> Optional[CaptionVariant]:
    """The first caption variant in one answer (None when the answer is empty)."""
    found = parse_variants(text)
    return found[0] if found else None
