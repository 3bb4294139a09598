"""chat_template_kwargs reach the template (e.g. Qwen3's enable_thinking), and the template's
output is what the server tokenizes. Uses the embedded tokenizer with a thinking-aware template."""

from __future__ import annotations

import pytest

from atom.entrypoints.errors import APIError
from atom.entrypoints.protocol import ChatCompletionRequest, ChatMessage
from atom.entrypoints.serving_chat import render_chat
from atom.entrypoints.serving_common import ServingContext

# A template in the style of Qwen3's: an empty think block when thinking is switched off.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


@pytest.fixture(scope="module")
def ctx(embedded_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    tok.chat_template = THINKING_TEMPLATE
    return ServingContext(engine=None, tokenizer=tok, model_names=["m"], max_model_len=64,
                          vocab_size=len(tok), metrics=None)  # fmt: skip


def text_of(ctx, ids):
    return ctx.tokenizer.decode(ids)


def test_enable_thinking_reaches_the_template(ctx):
    msgs = [ChatMessage(role="user", content="Hi")]
    thinking = text_of(ctx, render_chat(ctx, msgs))
    plain = text_of(ctx, render_chat(ctx, msgs, template_kwargs={"enable_thinking": False}))
    assert thinking == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert plain == thinking + "<think>\n\n</think>\n\n"


def test_content_parts_and_continue_final_message(ctx):
    parts = [ChatMessage(role="user", content=[{"type": "text", "text": "Hel"},
                                               {"type": "text", "text": "lo"}])]  # fmt: skip
    assert "user\nHello<|im_end|>" in text_of(ctx, render_chat(ctx, parts))
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "Hi"},
                                          {"role": "assistant", "content": "Sure, "}],
                                continue_final_message=True)  # fmt: skip
    assert req.add_generation_prompt is False
    ids = render_chat(ctx, req.messages, req.add_generation_prompt, req.continue_final_message)
    assert text_of(ctx, ids).endswith("<|im_start|>assistant\nSure, ")


def test_template_errors_are_client_errors(ctx):
    with pytest.raises(APIError, match="chat_template_kwargs"):
        render_chat(ctx, [ChatMessage(role="user", content="x")], template_kwargs={"tokenize": 1})
    saved = ctx.tokenizer.chat_template
    try:
        ctx.tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
        with pytest.raises(APIError, match="roles must alternate") as info:
            render_chat(ctx, [ChatMessage(role="user", content="x")])
        assert info.value.status == 400
    finally:
        ctx.tokenizer.chat_template = saved
