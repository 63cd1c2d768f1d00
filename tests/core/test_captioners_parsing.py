"""Robust parsing of VLM answers: JSON (fenced, with junk), headings, free text; nothing is lost."""

from __future__ import annotations

from plugin.core.captioners.parsing import parse_variant, parse_variants
from plugin.core.types import CaptionVariant

FULL = CaptionVariant("A harbour town by the sea.", "Boats in the south; houses in the north.", "A small port with piers.")


def test_plain_json():
    text = '{"one_sentence": "A harbour town by the sea.", "feature": "Boats in the south; houses in the north.", "caption": "A small port with piers."}'
    assert parse_variant(text) == FULL


def test_json_in_fence_with_prose_and_trailing_junk():
    text = (
        "Sure! Here is the description:\n```json\n"
        '{"One sentence": "A harbour town by the sea.", "Features": ["Boats in the south", "houses in the north"],'
        ' "Detailed caption": "A small port with piers."}\n```\nLet me know if you need more.'
    )
    v = parse_variant(text)
    assert v.one_sentence == "A harbour town by the sea."
    assert v.feature == "Boats in the south; houses in the north"
    assert v.caption == "A small port with piers."


def test_json_with_trailing_junk_and_no_fence():
    text = '{"one_sentence": "Open ocean.", "feature": "water everywhere", "caption": "Deep blue sea."}}} </s> garbage'
    assert parse_variant(text) == CaptionVariant("Open ocean.", "water everywhere", "Deep blue sea.")


def test_json_list_and_wrapper_give_several_variants():
    items = '[{"one_sentence": "a"}, {"one_sentence": "b", "caption": "bb"}]'
    assert [v.one_sentence for v in parse_variants(items)] == ["a", "b"]
    wrapped = '{"variants": [{"one_sentence": "x", "feature": "f"}, {"one_sentence": "y"}]}'
    assert [v.one_sentence for v in parse_variants(wrapped)] == ["x", "y"]


def test_headings_plain_and_markdown_bold():
    text = (
        "One sentence: A harbour town by the sea.\n"
        "Feature: Boats in the south; houses in the north.\n"
        "Caption: A small port with piers."
    )
    assert parse_variant(text) == FULL
    md = (
        "**One-sentence caption:** A harbour town by the sea.\n\n"
        "**Features:**\n- Boats in the south; houses in the north.\n\n"
        "## Caption\nA small port\nwith piers."
    )
    v = parse_variant(md)
    assert v.one_sentence == "A harbour town by the sea."
    assert "Boats in the south" in v.feature
    assert v.caption == "A small port with piers."


def test_free_text_fallback_keeps_everything():
    text = "Green fields with a river running through them. A bridge crosses it in the north."
    v = parse_variant(text)
    assert v.one_sentence == "Green fields with a river running through them."
    assert v.caption == text


def test_broken_json_falls_back_to_text():
    text = '{"one_sentence": "Airport with two runways", "feature": "terminal in the ea'
    v = parse_variant(text)
    assert v is not None and "Airport with two runways" in v.caption


def test_gibberish_and_empty():
    v = parse_variant("\x02��dX inv W\x13 nor")
    assert v is not None and v.text()
    assert parse_variants("") == [] and parse_variants("   \n ") == []
    assert parse_variant("") is None


def test_json_with_unknown_keys_only_is_kept_as_text():
    text = '{"answer": "a lake surrounded by trees"}'
    v = parse_variant(text)
    assert v is not None and "lake surrounded by trees" in v.caption
