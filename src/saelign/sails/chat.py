"""Token ids for feature selection and SFT, rendered exactly as `generate.chat_text` renders prompts.

A prompt is rendered with the tokenizer's own chat template and `add_generation_prompt=True`, so its last
tokens are the assistant header: activations there are what the model holds right before it answers, and the
SFT labels start exactly after them. Prompt and response are tokenised separately so the boundary is exact."""

from transformers import PreTrainedTokenizerBase

from saelign.errors import SaelignError
from saelign.sails.generate import chat_text


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) where the response ends with the end-of-turn token (what SFT must learn)."""
    prompt_text = chat_text(tokenizer, prompt)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        full_text = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full_text.startswith(prompt_text):
            raise SaelignError("the chat template renders the prompt differently once an answer follows it; "
                               "SFT needs a template whose generation prompt is a prefix of the full conversation")
        response_text = full_text[len(prompt_text):]
    else:  # the plain frame generate.chat_text uses for models without a template
        response_text = f" {response}{tokenizer.eos_token or ''}"
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None and eos in response_ids:
        # Template filler after the end-of-turn token (e.g. a newline) is not something the model must emit.
        response_ids = response_ids[: len(response_ids) - response_ids[::-1].index(eos)]
    return prompt_ids, response_ids
