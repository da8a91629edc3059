"""Chat messages to token ids, with the special tokens a user types kept as text.

A chat template renders messages into text full of control tokens (``<|im_start|>user``);
tokenizing that text parses every control token in it, including ones typed *inside* a message,
so a user could forge a turn of another role. OpenAI's API treats message content as text. Here
the template is rendered with a placeholder for each content; the template's own pieces are
tokenized with their control tokens, the contents with ``split_special_tokens`` (as text). When no
content holds a special token's text, this is exactly the plain rendering's tokenization.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

PLACEHOLDER = "\ue000tokentree-content-{}\ue001"  # private-use characters: never in real text
PLACEHOLDER_RE = re.compile("\ue000tokentree-content-(\\d+)\ue001")


def chat_ids(
    tokenizer: Any,
    messages: Sequence[dict],
    special_in_content: bool = False,
    tools: Sequence[dict] | None = None,
) -> list:
    """Token ids of ``messages`` rendered by the tokenizer's chat template with the generation
    prompt (and ``tools``, OpenAI-style function definitions, as the template renders them);
    control tokens typed in a content are text unless ``special_in_content``."""
    options = {"add_generation_prompt": True, "tokenize": False}
    if tools:
        options["tools"] = list(tools)
    if special_in_content or not any(_has_special(tokenizer, m.get("content")) for m in messages):
        text = tokenizer.apply_chat_template(list(messages), **options)
        return list(tokenizer(text, add_special_tokens=False).input_ids)
    marked = [
        m | {"content": PLACEHOLDER.format(i)} if isinstance(m.get("content"), str) else m
        for i, m in enumerate(messages)
    ]
    text = tokenizer.apply_chat_template(marked, **options)
    ids: list[int] = []
    for i, piece in enumerate(PLACEHOLDER_RE.split(text)):
        if i % 2 == 0:  # the template's own text, control tokens included
            ids += tokenizer(piece, add_special_tokens=False).input_ids if piece else []
        else:  # a message's content, as text
            content = messages[int(piece)]["content"]
            ids += tokenizer(content, add_special_tokens=False, split_special_tokens=True).input_ids
    return ids


def _has_special(tokenizer: Any, content: Any) -> bool:
    """Whether ``content`` (a string) contains the text of one of the tokenizer's special or
    added control tokens."""
    if not isinstance(content, str):
        return False
    specials = [t for t in tokenizer.all_special_tokens if t]
    specials += [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    return any(token in content for token in specials)
