"""Instructions and the word → token map of the text stream."""

from __future__ import annotations

import pytest

from editseg.errors import ConfigError, ExpressionError
from editseg.text import make_instruction, normalize_expression


def test_default_instruction_prepends_remove():
    assert make_instruction("the zebra on the left") == "remove the zebra on the left"
    assert make_instruction("  man   in red ") == "remove man in red"
    assert make_instruction("dog", "refined") == "Remove dog from the image."
    assert make_instruction("dog", "erase {expression} now") == "erase dog now"
    with pytest.raises(ConfigError):
        make_instruction("dog", "no placeholder")


@pytest.mark.parametrize("bad", ["", "   ", "!!", "\n\t"])
def test_empty_expressions_are_refused(bad):
    with pytest.raises(ExpressionError, match="empty|no words"):
        normalize_expression(bad)


def test_word_token_map_on_the_real_tokenizer(tiny_backbone):
    expression = "the small red circle on the left"
    text = tiny_backbone.encode_text([expression], [f"remove {expression}"])
    prompt = text.prompts[0]
    tokens = prompt.token_strings(prompt.indices("expression"))
    assert "".join(tokens).strip() == expression  # exactly the expression's tokens, in order
    content = prompt.token_strings(prompt.indices("expression-content"))
    assert "".join(content).split() == ["small", "red", "circle", "left"]
    instruction = "".join(prompt.token_strings(prompt.indices("instruction")))
    assert instruction.strip() == f"remove {expression}"
    everything = prompt.indices("all")
    assert everything == list(range(prompt.num_real_tokens)) and prompt.num_real_tokens < 512
    assert set(prompt.indices("instruction")) < set(everything)  # chat template tokens excluded
    red = prompt.indices_for_words(["RED"])
    assert prompt.token_strings(red) == [" red"]
    # padding is never a prompt token
    assert max(everything) < prompt.num_real_tokens <= min(range(prompt.num_real_tokens, 512), default=512)
    with pytest.raises(ExpressionError):
        prompt.indices_for_words(["zebra"])


def test_content_tokens_drop_stop_words_and_never_fall_back_silently(tiny_backbone):
    prompt = tiny_backbone.encode_text(["the one on the left"], ["remove the one on the left"]).prompts[0]
    assert "".join(prompt.token_strings(prompt.indices("expression-content"))).split() == ["left"]
    prompt = tiny_backbone.encode_text(["the one"], ["remove the one"]).prompts[0]
    assert prompt.indices("expression")  # the words exist ...
    with pytest.raises(ExpressionError, match="no content words"):  # ... but the content set is empty
        prompt.indices("expression-content")


def test_too_long_expression_is_a_clear_error(tiny_backbone):
    expression = " ".join(["zebra"] * 600)
    with pytest.raises(ExpressionError, match="too long"):
        tiny_backbone.encode_text([expression], [f"remove {expression}"])
