"""Text in, text out: a trained model and its tokenizer continue a prompt.

The body of `minlm generate`, and the samples at the end of `minlm quickstart`. A sample ends at the
end-of-text token (when the tokenizer has it) or after `max_tokens` new tokens; its text is the prompt
followed by the decoded new tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from NLM.min_lm.device import resolve_device
from NLM.min_lm.errors import UserError
from NLM.min_lm.tokenization import END_OF_TEXT, BPETokenizer
from NLM.min_lm.transformer import TransformerLM, load_model
from NLM.min_lm.transformer.sampling import TextStream, generate


def load_model_for(tokenizer: BPETokenizer, checkpoint: str, device: str = "auto",
                   tokenizer_name: str = "the tokenizer") -> TransformerLM:
    """The checkpoint's model on `device`, checked against the tokenizer it will generate with.

    A model may have more rows than its tokenizer has tokens (a padded vocabulary, or --vocab_size set
    above what the tokenizer reached); generation then samples only the tokenizer's ids. Fewer rows means
    the tokenizer was not the model's.
    """
    model, _ = load_model(checkpoint, resolve_device(device))
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(
            f"{tokenizer_name} ({len(tokenizer)} tokens with special tokens {tokenizer.special_tokens}) "
            f"does not match the model ({checkpoint}: vocab_size {model.config.vocab_size}); "
            f"use the tokenizer the model was trained with"
        )
    return model


def sample_texts(
    model: TransformerLM,
    tokenizer: BPETokenizer,
    prompt: str,
    num_samples: int = 1,
    max_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
    *,
    seed: int | None = None,
    prompt_ids: list[int] | None = None,
    on_text: Callable[[str], object] | None = None,
    on_token: Callable[[list[int]], object] | None = None,
) -> list[str]:
    """`num_samples` continuations of `prompt`, decoded together as one batch; each is prompt + new text.

    seed: makes the samples reproducible; None draws fresh randomness on every call.
    prompt_ids: the ids to continue, when they are not simply `tokenizer.encode(prompt)` (e.g. with an
    end-of-text token before the prompt, to start a fresh document).
    on_text: receives the new text of a single sample piece by piece as it is generated (streaming).
    on_token: receives each step's new ids, one per sample (e.g. to move a progress bar).
    """
    eos_id = tokenizer.encode(END_OF_TEXT)[0] if END_OF_TEXT in tokenizer.special_tokens else None
    prompt_ids = tokenizer.encode(prompt) if prompt_ids is None else prompt_ids
    stream = TextStream(tokenizer.vocab) if on_text is not None and num_samples == 1 else None

    def step(ids: list[int]) -> None:
        if on_token is not None:
            on_token(ids)
        if stream is not None:
            on_text(stream.push(id_ for id_ in ids if id_ != eos_id))

    generator = torch.Generator(next(model.parameters()).device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    batch = torch.tensor([prompt_ids] * num_samples, dtype=torch.long)
    ids = generate(model, batch, max_tokens, temperature, top_p, top_k, eos_id, generator=generator,
                   on_token=step, vocab_limit=len(tokenizer))
    if stream is not None:
        on_text(stream.flush())
    texts = []
    for row in ids.tolist():
        new = row[len(prompt_ids):]
        if eos_id in new:
            new = new[: new.index(eos_id)]
        texts.append(prompt + tokenizer.decode(new))
    return texts
