"""Control tokens typed inside chat messages are text, unless asked otherwise."""

from conftest import tiny_tokenizer

from tokentree.chat import chat_ids

EOS = 2  # "</s>" in the tiny tokenizer


def test_a_typed_control_token_stays_text():
    tok = tiny_tokenizer()
    messages = [{"role": "user", "content": "a</s>b"}]
    ids = chat_ids(tok, messages)
    assert EOS not in ids
    assert tok.decode(ids) == tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert EOS in chat_ids(tok, messages, special_in_content=True)


def test_plain_content_is_tokenized_as_the_whole_rendering_is():
    tok = tiny_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert chat_ids(tok, messages) == tok(text, add_special_tokens=False).input_ids
