"""Sample text from a trained checkpoint, streamed to stdout as it is generated.

    minlm generate --checkpoint runs/model.pt --vocab_path tokenizers/train_vocab.json \\
        --merges_path tokenizers/train_merges.txt --prompt "Once upon a time" --temperature 0.8 --top_p 0.95

The model's shape comes from the checkpoint. A sample ends at <|endoftext|> or after --max_tokens new
tokens. The prompt "<|endoftext|>" starts a fresh document (unconditional sampling). With --num_samples N
the N samples are decoded together as one batch and printed one after another.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from NLM.min_lm.distributed import DistContext, resolve_device
from NLM.min_lm.errors import UserError
from NLM.min_lm.scripts.args import arg, check_fields, parse_config, run_cli
from NLM.min_lm.tokenization import BPETokenizer
from NLM.min_lm.transformer import TransformerLM, load_model
from NLM.min_lm.transformer.sampling import TextStream, generate

EOS_TOKEN = "<|endoftext|>"


@dataclass
class GenerateConfig:
    checkpoint: str = field(metadata=arg("checkpoint written by `minlm train` (it holds the model's config)"))
    vocab_path: str = field(metadata=arg("the tokenizer's vocab.json"))
    merges_path: str = field(metadata=arg("the tokenizer's merges.txt"))
    prompt: str = field(metadata=arg("text to continue; '<|endoftext|>' starts a fresh document"))
    max_tokens: int = field(default=256, metadata=arg("new tokens per sample at most"))
    temperature: float = field(default=1.0, metadata=arg("softmax temperature; 0 = greedy (argmax)"))
    top_p: float | None = field(default=None, metadata=arg("nucleus sampling: keep the most likely tokens "
                                                           "up to this total probability"))
    top_k: int | None = field(default=None, metadata=arg("sample among the k most likely tokens only"))
    seed: int | None = field(default=None, metadata=arg("random seed, for reproducible samples", low=0))
    num_samples: int = field(default=1, metadata=arg("independent samples, generated as one batch"))
    device: str = field(default="auto", metadata=arg("auto (cuda, then mps, then cpu), cpu, cuda, "
                                                     "cuda:N or mps"))
    special_tokens: list[str] = field(default_factory=lambda: [EOS_TOKEN],
                                      metadata=arg("the tokenizer's special tokens"))

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.prompt:
            raise UserError("--prompt is empty; give some text (or '<|endoftext|>' for a fresh document)")
        if self.max_tokens < 1:
            raise UserError(f"--max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise UserError(f"--temperature must not be negative, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top_k must be at least 1, got {self.top_k}")
        if self.num_samples < 1:
            raise UserError(f"--num_samples must be at least 1, got {self.num_samples}")


def load_tokenizer(vocab_path: str, merges_path: str, special_tokens: list[str]) -> BPETokenizer:
    """The tokenizer from its two files; files that do not belong together are a user error."""
    try:
        return BPETokenizer.from_files(vocab_path, merges_path, special_tokens)
    except (ValueError, KeyError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"{vocab_path} / {merges_path}: not a matching vocab and merges pair ({e})") from None


def check_vocab_sizes(tokenizer: BPETokenizer, model: TransformerLM, config: GenerateConfig) -> None:
    """A model may have more rows than its tokenizer has tokens (a padded vocabulary, or --vocab_size set
    above what the tokenizer reached); generation then samples only the tokenizer's ids. Fewer rows means
    the tokenizer was not the model's."""
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(
            f"the tokenizer ({config.vocab_path}: {len(tokenizer)} tokens with special tokens "
            f"{config.special_tokens}) does not match the model ({config.checkpoint}: vocab_size "
            f"{model.config.vocab_size}); use the tokenizer the model was trained with"
        )


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run(config: GenerateConfig) -> list[str]:
    """Generate `num_samples` continuations of the prompt; print them and return them (prompt included)."""
    tokenizer = load_tokenizer(config.vocab_path, config.merges_path, config.special_tokens)
    device = resolve_device(config.device, DistContext())
    model, _ = load_model(config.checkpoint, device)
    check_vocab_sizes(tokenizer, model, config)
    eos_id = tokenizer.encode(EOS_TOKEN)[0] if EOS_TOKEN in config.special_tokens else None
    prompt_ids = tokenizer.encode(config.prompt)

    generator = torch.Generator(device)
    if config.seed is None:
        generator.seed()  # fresh randomness on every run
    else:
        generator.manual_seed(config.seed)

    on_token = None
    if config.num_samples == 1:  # stream one sample token by token; a batch is printed when done
        stream = TextStream(tokenizer.vocab)
        _write(config.prompt)
        on_token = lambda ids: _write(stream.push(id_ for id_ in ids if id_ != eos_id))  # noqa: E731

    prompt = torch.tensor([prompt_ids] * config.num_samples, dtype=torch.long)
    ids = generate(model, prompt, config.max_tokens, config.temperature, config.top_p, config.top_k,
                   eos_id, generator=generator, on_token=on_token, vocab_limit=len(tokenizer))

    texts = []
    for row in ids.tolist():
        new = row[len(prompt_ids):]
        if eos_id in new:
            new = new[: new.index(eos_id)]
        texts.append(config.prompt + tokenizer.decode(new))
    if config.num_samples == 1:
        _write(stream.flush() + "\n")
    else:
        for i, text in enumerate(texts, 1):
            _write(f"--- sample {i} of {config.num_samples} ---\n{text}\n")
    return texts


def main(argv: list[str] | None = None, prog: str = "python -m NLM.min_lm.scripts.generate") -> int:
    config = parse_config(GenerateConfig, argv, prog, __doc__)
    # run() returns the texts for library callers; the command's exit status is 0.
    return run_cli(lambda: run(config))


if __name__ == "__main__":
    sys.exit(main())
