"""RSRT prompts: the paper's structured caption request, as presets.

The prompt text is part of the caption cache key (`PROMPT_VERSION`): bump it whenever a wording
below changes, so tiles captioned with the old prompt are captioned again rather than mixed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import EngineError

PROMPT_VERSION = "rsrt-1"

SYSTEM = (
    "You describe remote sensing images (satellite or aerial, top = North) for a search engine. "
    "Describe only what is visible; do not guess place names."
)

_FORMAT = (
    'Answer with one JSON object and nothing else: {"one_sentence": "...", "feature": "...", "caption": "..."}. '
    '"one_sentence": one sentence on the overall scene first, then its main detail. '
    '"feature": the main objects and land covers with their positions (north, south, east, west, '
    'north-east, ..., centre). '
    '"caption": a detailed paragraph on land cover, objects, colours, shapes, textures and their layout; '
    "use qualitative sizes (small, large, most of the image), no percentages."
)

#: One wording per variant: the same three fields, each asked from a different angle so the K
#: variants differ in emphasis (the paper's 5 captions per image) rather than only in sampling noise.
VARIANT_FOCUS = (
    "Describe this remote sensing image.",
    "Describe this remote sensing image, paying most attention to land cover (water, vegetation, "
    "bare ground, buildings) and where each lies.",
    "Describe this remote sensing image, paying most attention to man-made objects and structures "
    "(buildings, roads, fields, ports, bridges) and their arrangement.",
    "Describe this remote sensing image, paying most attention to natural features (coast, rivers, "
    "forests, wetlands, relief) and their shapes.",
    "Describe this remote sensing image as a person searching for it would: the kind of place it shows "
    "and its most distinctive element.",
)


@dataclass(frozen=True)
class Preset:
    """How many variants to ask for and how long each answer may be."""

    name: str
    variants: int
    max_new_tokens: int


PRESETS = {
    "rsrt": Preset("rsrt", 5, 320),
    "fast": Preset("fast", 2, 200),
}


def get_preset(name: str) -> Preset:
    """The named preset, or an EngineError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise EngineError(f"unknown captioner preset {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None


#: The wording of the sampled variants asked for in one request (`n` choices): one prompt for all of
#: them, so it invites each answer to pick its own emphasis (the choices are sampled independently).
SAMPLED_FOCUS = (
    "Describe this remote sensing image, paying most attention to one aspect of your choice: land cover "
    "and where it lies, man-made structures, natural features, or what makes the place distinctive."
)


def sampled_prompt() -> str:
    """The user prompt of the sampled variants asked for in one request."""
    return f"{SAMPLED_FOCUS} {_FORMAT}"


def variant_prompt(k: int) -> str:
    """The user prompt of variant `k` (wordings cycle when more variants than wordings are asked)."""
    return f"{VARIANT_FOCUS[k % len(VARIANT_FOCUS)]} {_FORMAT}"

