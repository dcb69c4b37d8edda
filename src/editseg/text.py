"""Instructions, words and prompt tokens.

An expression ("the zebra on the left") becomes an editing instruction through a template
("remove {expression}"). The text encoder sees the instruction inside its chat template, padded
to a fixed length, so "prompt tokens" must be an explicit index set. :class:`PromptTokens` keeps
the map from words of the instruction to token indices in the text stream, so token sets can be
chosen by role (expression / instruction / everything) or by word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from .errors import ConfigError, ExpressionError

INSTRUCTION_TEMPLATES: dict[str, str] = {
    # The paper (§3.2): prepend "remove" to the referring expression.
    "remove": "remove {expression}",
    # Our rule-based stand-in for the paper's MLLM refinement (appendix A3), which rewrote
    # expressions with the editing model's own prompt-refinement pipeline (not reproducible here:
    # it needs that MLLM). Pass ``instruction_refiner`` to Segmenter to plug a real one in.
    "refined": "Remove {expression} from the image.",
}

PROMPT_TOKEN_SETS = ("expression", "expression-content", "instruction", "all")
"""Which text tokens count as "the prompt" in eqs. 3-4.

- ``expression``: tokens of the referring expression's own words (default);
- ``expression-content``: the same without stop words (RefAM-style filtering);
- ``instruction``: every token of the instruction, "remove" included;
- ``all``: every non-padding token, chat-template tokens included.
"""

# A compact English stop-word list (articles, pronouns, prepositions, auxiliaries, conjunctions).
STOP_WORDS = frozenset(
    """a an the this that these those some any each every either neither no
    i me my we our you your he him his she her it its they them their
    of in on at to for from by with about into onto over under above below behind between among
    near next beside besides beyond through across along around against toward towards upon via
    up down out off
    and or but nor so yet than then also too very just only
    is are was were be been being am do does did has have had having
    which who whom whose what where when while there here
    one ones""".split()
)

_WORD_PATTERN = re.compile(r"[\w]+(?:['’][\w]+)*", re.UNICODE)


@dataclass(frozen=True)
class Word:
    """A word of the instruction, with its character span in the encoder's full text."""

    text: str
    start: int
    end: int
    in_expression: bool
    is_stop_word: bool
    token_indices: tuple[int, ...] = ()


def make_instruction(expression: str, template: str = "remove") -> str:
    """Build the editing instruction for ``expression`` from a preset name or a format string."""
    expression = normalize_expression(expression)
    pattern = INSTRUCTION_TEMPLATES.get(template, template)
    if "{expression}" not in pattern:
        raise ConfigError(
            f"Instruction template {template!r} is neither a preset ({', '.join(INSTRUCTION_TEMPLATES)}) "
            "nor a format string containing '{expression}'."
        )
    return pattern.format(expression=expression)


def normalize_expression(expression: str) -> str:
    """Collapse white space; refuse expressions that cannot name anything.

    Refused with :class:`ExpressionError`: non-strings, empty or blank text, text without a letter
    or digit (punctuation, symbols, emoji: said so), and expressions made only of stop words
    ("the", "it", "this one"): their prompt tokens carry no content, so the mask would be
    meaningless whatever the model.
    """
    if not isinstance(expression, str):
        raise ExpressionError(f"Expression must be a string, got {type(expression).__name__}.")
    cleaned = " ".join(expression.split())
    if not cleaned:
        raise ExpressionError(f"Expression {expression!r} is empty: give at least one word.")
    words = _WORD_PATTERN.findall(cleaned)
    if not words or not any(ch.isalnum() for word in words for ch in word):
        raise ExpressionError(
            f"Expression {_shown(cleaned)} has no words, only {_symbol_kind(cleaned)}: describe the object in words."
        )
    if all(word.lower() in STOP_WORDS for word in words):
        raise ExpressionError(
            f"Expression {_shown(cleaned)} is made only of stop words (articles, pronouns, prepositions), "
            "so it names nothing to segment: add what the object is, e.g. 'the dog'."
        )
    return cleaned


def _shown(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _symbol_kind(text: str) -> str:
    """"emoji", "punctuation" or "symbols": what a word-less expression consists of."""
    import unicodedata

    categories = {unicodedata.category(ch) for ch in text if not ch.isspace()}
    if any(c == "So" or c == "Sk" or c == "Cs" for c in categories) or any(ord(ch) >= 0x1F000 for ch in text):
        return "emoji or pictographs"
    if categories and all(c.startswith("P") for c in categories):
        return "punctuation"
    return "symbols"


def count_tokens(tokenizer, texts: Sequence[str]) -> list[int]:
    """Token counts of ``texts`` without truncation and without the tokenizer's "Token indices
    sequence length is longer than ... indexing errors" warning (callers raise a clean error)."""
    return [len(ids) for ids in tokenizer(list(texts), verbose=False)["input_ids"]]


def split_words(text: str, start: int, end: int, expression_span: tuple[int, int]) -> list[Word]:
    """Words of ``text[start:end]`` with absolute spans and their role."""
    words = []
    for match in _WORD_PATTERN.finditer(text, start, end):
        lower = match.group().lower()
        inside = match.start() >= expression_span[0] and match.end() <= expression_span[1]
        words.append(Word(match.group(), match.start(), match.end(), inside, lower in STOP_WORDS))
    return words


def tokens_overlapping(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, ...]:
    """Indices of tokens whose character span overlaps ``[start, end)``."""
    return tuple(i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start)


@dataclass
class PromptTokens:
    """One tokenised instruction and the map from its words to token indices.

    ``offsets`` are character spans into ``text`` (the chat-templated string the encoder saw);
    indices are positions in the text stream of the transformer (0 = first text token).
    """

    expression: str
    instruction: str
    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    num_real_tokens: int
    instruction_span: tuple[int, int]
    expression_span: tuple[int, int]
    words: list[Word] = field(default_factory=list)

    def indices(self, token_set: str = "expression") -> list[int]:
        """Token indices of a named set (see :data:`PROMPT_TOKEN_SETS`)."""
        if token_set == "all":
            return list(range(self.num_real_tokens))
        if token_set == "instruction":
            return list(tokens_overlapping(self.offsets, *self.instruction_span))
        if token_set == "expression":
            chosen = [w for w in self.words if w.in_expression]
        elif token_set == "expression-content":
            chosen = [w for w in self.words if w.in_expression and not w.is_stop_word]
            if not chosen:  # no silent fall-back: the result would record a setting it did not use
                raise ExpressionError(
                    f"Expression {self.expression!r} has no content words, so prompt_tokens='expression-content' "
                    "selects no token; use prompt_tokens='expression' or add a content word."
                )
        else:
            raise ConfigError(f"Unknown prompt token set {token_set!r}; choose one of {', '.join(PROMPT_TOKEN_SETS)}.")
        return sorted({i for w in chosen for i in w.token_indices})

    def indices_for_words(self, words: Sequence[str]) -> list[int]:
        """Token indices of the instruction words equal (case-insensitively) to any of ``words``."""
        wanted = {w.lower() for w in words}
        found = sorted({i for w in self.words if w.text.lower() in wanted for i in w.token_indices})
        if not found:
            raise ExpressionError(f"None of the words {sorted(wanted)} occurs in the instruction {self.instruction!r}.")
        return found

    def token_strings(self, indices: Sequence[int]) -> list[str]:
        """The text of each token (as a substring of the encoder input), each character shown once.

        Byte-level tokenizers split one CJK character or emoji into several tokens that all report
        the character's span; the first shows it and the others show only what they add (often
        ``""``), so ``"".join(...)`` of consecutive tokens is the text they cover, not "狗狗狗".
        """
        strings, covered = [], -1
        for i in indices:
            start, end = self.offsets[i]
            strings.append(self.text[max(start, covered) : end] if end > covered else "")
            covered = max(covered, end)
        return strings


def align_prompt(
    expression: str,
    instruction: str,
    text: str,
    input_ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    num_real_tokens: int,
) -> PromptTokens:
    """Locate ``instruction`` (and the expression inside it) in the encoder ``text`` and map words to tokens."""
    start = text.find(instruction)
    if start < 0:
        raise ExpressionError(
            "The chat template changed the instruction text, so its tokens cannot be located: "
            f"{instruction!r} not found in the encoder input."
        )
    instruction_span = (start, start + len(instruction))
    expression_at = instruction.find(expression)
    if expression_at < 0:
        raise ExpressionError(f"Instruction {instruction!r} does not contain the expression {expression!r}.")
    expression_span = (start + expression_at, start + expression_at + len(expression))
    offsets = [tuple(map(int, o)) for o in offsets]
    real_offsets = offsets[:num_real_tokens] + [(0, 0)] * (len(offsets) - num_real_tokens)
    words = [
        Word(w.text, w.start, w.end, w.in_expression, w.is_stop_word, tokens_overlapping(real_offsets, w.start, w.end))
        for w in split_words(text, *instruction_span, expression_span)
    ]
    return PromptTokens(
        expression=expression,
        instruction=instruction,
        text=text,
        input_ids=list(map(int, input_ids)),
        offsets=real_offsets,
        num_real_tokens=num_real_tokens,
        instruction_span=instruction_span,
        expression_span=expression_span,
        words=words,
    )
