"""Export to / import from Hugging Face: same logits, same greedy text, same token ids, exact round trip.

The references are independent: transformers' own LlamaForCausalLM and AutoTokenizer loading the
exported directory, tiktoken for GPT-2's vocabulary, and the original checkpoint for the round trip.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

pytest.importorskip("safetensors")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from NLM.min_lm.errors import UserError  # noqa: E402
from NLM.min_lm.hf import export_hf, import_hf  # noqa: E402
from NLM.min_lm.hf.llama import (  # noqa: E402
    adjacent_to_half_split,
    from_llama_config,
    half_split_to_adjacent,
    to_llama_config,
)
from NLM.min_lm.hf.tokenizer_json import byte_level_bpe_from_tokenizer_json, tokenizer_json  # noqa: E402
from NLM.min_lm.scripts import export_hf as export_script  # noqa: E402
from NLM.min_lm.scripts import import_hf as import_script  # noqa: E402
from NLM.min_lm.tokenization import BPETokenizer, train_bpe  # noqa: E402
from NLM.min_lm.tokenization.pretokenize import GPT2_SPLIT_PATTERN  # noqa: E402
from NLM.min_lm.transformer import ModelConfig, TransformerLM, load_model, save_checkpoint  # noqa: E402
from NLM.min_lm.transformer.attention import RotaryPositionalEmbedding  # noqa: E402
from NLM.min_lm.transformer.checkpoint import read_checkpoint  # noqa: E402
from NLM.min_lm.transformer.sampling import generate  # noqa: E402

EOT = "<|endoftext|>"
CONFIG = ModelConfig(vocab_size=300, context_length=64, d_model=64, num_layers=2, num_heads=4, d_ff=128,
                     rope_theta=10000.0, norm_eps=1e-5)


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory, data_dir):
    """A 300-token tokenizer trained on corpus.en with <|endoftext|> (id 0)."""
    vocab, merges = train_bpe(data_dir / "corpus.en", CONFIG.vocab_size, [EOT], num_workers=1)
    folder = tmp_path_factory.mktemp("tokenizer")
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    BPETokenizer(vocab, merges, [EOT]).save(vocab_path, merges_path)
    return vocab_path, merges_path


@pytest.fixture(scope="module")
def ours(tokenizer_files) -> BPETokenizer:
    return BPETokenizer.from_files(*tokenizer_files, special_tokens=[EOT])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random model whose weights are spread enough that logits differ clearly between tokens."""
    torch.manual_seed(0)
    model = TransformerLM.from_config(CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
            else:
                p.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(model, None, 7, path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint, tokenizer_files):
    return export_hf(checkpoint, *tokenizer_files, tmp_path_factory.mktemp("export") / "hf")


@pytest.fixture(scope="module")
def hf_model(exported):
    return transformers.AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(exported):
    return transformers.AutoTokenizer.from_pretrained(exported)


def test_directory_holds_the_files_transformers_reads(exported):
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json"} <= names
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is False
    assert (config["bos_token_id"], config["eos_token_id"]) == (0, 0)
    sizes = config["hidden_size"], config["num_hidden_layers"], config["max_position_embeddings"]
    assert sizes == (64, 2, 64)


def test_rope_reordering_turns_adjacent_pairs_into_rotate_half():
    """Reordering features as q/k rows are reordered maps our rotation onto transformers' rotate_half."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    num_heads, head_dim, seq = 2, 8, 5
    x = torch.randn(1, num_heads, seq, head_dim, dtype=torch.float64)
    positions = torch.arange(seq)
    rotated_ours = RotaryPositionalEmbedding(500.0, head_dim, seq, dtype=torch.float64)(x, positions)

    # the feature order that the row reordering produces, per head
    order = adjacent_to_half_split(torch.arange(head_dim, dtype=torch.float64)[:, None], 1)[:, 0].long()
    inv_freq = 500.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(positions.double(), inv_freq)
    cos, sin = torch.cat([angles.cos()] * 2, -1)[None], torch.cat([angles.sin()] * 2, -1)[None]
    rotated_hf, _ = apply_rotary_pos_emb(x[..., order], x[..., order], cos, sin)
    torch.testing.assert_close(rotated_hf, rotated_ours[..., order], rtol=0, atol=1e-12)


def test_row_reordering_is_inverted_exactly():
    weight = torch.randn(64, 32)
    assert torch.equal(half_split_to_adjacent(adjacent_to_half_split(weight, 4), 4), weight)


def test_logits_equal_ours(checkpoint, hf_model):
    model, _ = load_model(checkpoint)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, CONFIG.vocab_size, (3, CONFIG.context_length), generator=generator)
    with torch.no_grad():
        ours, theirs = model(ids), hf_model(ids).logits
    assert ours.std() > 1.0  # logits far apart, so the comparison is meaningful
    assert (ours - theirs).abs().max() <= 1e-4


def test_greedy_generation_equals_ours(checkpoint, hf_model):
    model, _ = load_model(checkpoint)
    prompt = torch.tensor([[5, 17, 80, 123]])
    ours = generate(model, prompt, max_new_tokens=40, temperature=0.0, eos_id=0)
    with torch.no_grad():
        theirs = hf_model.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=40
        )
    assert theirs.shape[1] > prompt.shape[1] + 10  # a real continuation, not an immediate <|endoftext|>
    assert theirs.tolist() == ours.tolist()


def test_token_ids_equal_ours_on_the_corpora(data_dir, ours, hf_tokenizer):
    names = ["address.txt", "german.txt", "tinystories_sample.txt", "corpus.en",
             "special_token_double_newlines_non_whitespace.txt", "special_token_trailing_newlines.txt"]
    for name in names:
        text = (data_dir / name).read_text(encoding="utf-8")
        expected = ours.encode(text)
        assert hf_tokenizer(text)["input_ids"] == expected, name  # no BOS added either
        assert hf_tokenizer.decode(expected) == text == ours.decode(expected), name


TEXT = st.lists(
    st.one_of(
        st.text(max_size=30),
        st.sampled_from([EOT, " ", "\n\n", "don't", " 1,234", "\u00a0x", "\r\n", "\x1c\x1f", "\x85", "  a"]),
    ),
    max_size=8,
).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=TEXT)
def test_token_ids_equal_ours_on_any_text(ours, hf_tokenizer, text):
    assert hf_tokenizer(text)["input_ids"] == ours.encode(text)


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.integers(0, CONFIG.vocab_size - 1), max_size=20))
def test_decoding_equals_ours_even_for_broken_utf8(ours, hf_tokenizer, ids):
    assert hf_tokenizer.decode(ids) == ours.decode(ids)


OVERLAPPING = ["<|endoftext|>", "<|endoftext|><|endoftext|>", "<|a|>", "<|a", "ü b"]


@pytest.fixture(scope="module")
def overlapping(ours):
    """Ours with special tokens that overlap (and one that is not ASCII), and its tokenizer.json."""
    tokenizer = BPETokenizer(ours.vocab, ours.merges, OVERLAPPING)
    ids = {s: tokenizer.encode(s)[0] for s in OVERLAPPING}
    doc = tokenizer_json(tokenizer.vocab, tokenizer.merges, ids)
    return tokenizer, tokenizers.Tokenizer.from_str(json.dumps(doc))


@settings(max_examples=100, deadline=None)
@given(text=st.lists(st.sampled_from([*OVERLAPPING, "x", " ", "<|", "|>", "a|>", "ü"]), max_size=10)
       .map("".join))
def test_overlapping_special_tokens_prefer_the_longest_in_both(overlapping, text):
    ours, hf = overlapping
    assert hf.encode(text).ids == ours.encode(text)


def test_gpt2_tokenizer_json_equals_tiktoken(data_dir):
    """GPT-2's own vocabulary through our tokenizer.json: the ids tiktoken (the original) gives."""
    tiktoken = pytest.importorskip("tiktoken")
    gpt2 = BPETokenizer.from_files(data_dir / "gpt2_vocab.json", data_dir / "gpt2_merges.txt", [EOT])
    hf = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json(gpt2.vocab, gpt2.merges, {EOT: 50256})))
    ranks = {token: i for i, token in gpt2.vocab.items() if i != 50256}
    reference = tiktoken.Encoding("gpt2-local", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                                  special_tokens={EOT: 50256})
    for name in ["address.txt", "german.txt", "tinystories_sample.txt"]:
        text = (data_dir / name).read_text(encoding="utf-8")
        assert hf.encode(text).ids == reference.encode(text, allowed_special="all"), name


def test_export_then_import_is_bit_identical(tmp_path, checkpoint, exported, tokenizer_files, ours):
    out = import_hf(exported, tmp_path / "back.pt", tmp_path / "vocab.json", tmp_path / "merges.txt")
    original, back = read_checkpoint(checkpoint), read_checkpoint(out)
    assert back["model_config"] == original["model_config"]
    assert back["model"].keys() == original["model"].keys()
    for name, tensor in original["model"].items():
        assert torch.equal(back["model"][name], tensor), name
        assert back["model"][name].dtype == tensor.dtype
    again = BPETokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt", [EOT])
    assert again.vocab == ours.vocab and again.merges == ours.merges


def test_bfloat16_export_round_trips(tmp_path, checkpoint, tokenizer_files):
    out = export_hf(checkpoint, *tokenizer_files, tmp_path / "hf", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    back = read_checkpoint(import_hf(out, tmp_path / "back.pt"))["model"]
    for name, tensor in read_checkpoint(checkpoint)["model"].items():
        assert torch.equal(back[name], tensor.to(torch.bfloat16)), name


def test_tokenizer_json_from_other_writers(ours):
    """GPT-2-style files written by tokenizers itself (ByteLevel with its built-in regex) import too;
    pipelines our tokenizer cannot reproduce are refused with the reason."""
    doc = tokenizer_json(ours.vocab, ours.merges, {EOT: 0})
    builtin = {**doc, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}
    assert byte_level_bpe_from_tokenizer_json(builtin, "t.json") == (ours.vocab, ours.merges, [EOT])
    metaspace = {**doc, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}
    assert "pre-tokenizer" in byte_level_bpe_from_tokenizer_json(metaspace, "t.json")
    normalized = {**doc, "normalizer": {"type": "NFC"}}
    assert "normalizer" in byte_level_bpe_from_tokenizer_json(normalized, "t.json")


def test_import_refuses_a_tokenizer_it_cannot_reproduce(tmp_path, exported):
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    for path in exported.iterdir():
        (hf_dir / path.name).write_bytes(path.read_bytes())
    doc = json.loads((hf_dir / "tokenizer.json").read_text())
    (hf_dir / "tokenizer.json").write_text(json.dumps({**doc, "normalizer": {"type": "Lowercase"}}))
    with pytest.raises(UserError, match="tokenizer.json.*normalizer"):
        import_hf(hf_dir, tmp_path / "m.pt", tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert not (tmp_path / "m.pt").exists()


def test_import_of_a_tied_llama_written_by_transformers(tmp_path):
    """A model saved by transformers itself (tied embeddings, sharded files): our logits equal its logits."""
    torch.manual_seed(3)
    hf_config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=32, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    model, _ = load_model(import_hf(tmp_path / "hf", tmp_path / "model.pt"))
    assert model.config == ModelConfig(128, 32, 32, 2, 2, 64, rope_theta=500.0, norm_eps=1e-6)
    assert torch.equal(model.lm_head.weight, model.token_embeddings.weight)
    ids = torch.randint(0, 128, (2, 32))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-5


def test_vocab_mismatch_is_refused(tmp_path, checkpoint, data_dir):
    with pytest.raises(UserError, match="vocab_size=300"):
        export_hf(checkpoint, data_dir / "gpt2_vocab.json", data_dir / "gpt2_merges.txt", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_existing_directory_needs_force(tmp_path, checkpoint, tokenizer_files):
    out = tmp_path / "hf"
    export_hf(checkpoint, *tokenizer_files, out)
    (out / "config.json").write_text("{}")  # an earlier export, touched since
    with pytest.raises(UserError, match="--force"):
        export_hf(checkpoint, *tokenizer_files, out)
    assert (out / "config.json").read_text() == "{}"
    export_hf(checkpoint, *tokenizer_files, out, force=True)
    assert (out / "config.json").read_text() != "{}" and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]
    # a directory holding anything else is not replaced, even with --force (issue 13: it deleted inputs)
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="does not look like an earlier export"):
        export_hf(checkpoint, *tokenizer_files, out, force=True)
    assert (out / "keep.txt").read_text() == "mine"


LLAMA = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
         "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model_type": "gpt2"}, "model_type"),
        ({"num_key_value_heads": 1}, "num_key_value_heads"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope scaling"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope scaling"),
    ],
)
def test_configs_that_do_not_fit_are_named(change, named):
    with pytest.raises(UserError, match=named):
        from_llama_config({**LLAMA, **change}, "config.json")


def test_llama_config_fields_map_to_ours():
    config, tied = from_llama_config({**LLAMA, "rope_theta": 5e5, "rms_norm_eps": 1e-6}, "config.json")
    assert config == ModelConfig(10, 16, 8, 1, 2, 16, rope_theta=5e5, norm_eps=1e-6) and not tied


def test_cli_export_and_import(tmp_path, checkpoint, tokenizer_files, capsys):
    vocab_path, merges_path = tokenizer_files
    argv = ["--checkpoint", str(checkpoint), "--vocab_path", str(vocab_path),
            "--merges_path", str(merges_path), "--out", str(tmp_path / "hf")]
    assert export_script.main(argv) == 0
    assert import_script.main([str(tmp_path / "hf"), "--out", str(tmp_path / "back.pt")]) == 0
    capsys.readouterr()

    assert export_script.main(argv) == 2  # the directory exists now
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--force" in err and err.count("\n") == 1

    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 2}))
    assert import_script.main([str(tmp_path / "hf"), "--out", str(tmp_path / "gqa.pt")]) == 2
    err = capsys.readouterr().err
    assert "num_key_value_heads" in err and err.count("\n") == 1
    assert not (tmp_path / "gqa.pt").exists()


# --- qk_norm models are Qwen3 models ------------------------------------------------------------------------

QK_CONFIG = ModelConfig(**{**CONFIG.__dict__, "qk_norm": True, "zero_init_proj": True})


@pytest.fixture(scope="module")
def qk_checkpoint(tmp_path_factory):
    """A random qk_norm model with gains far from 1 (a wrongly ordered q/k gain would change the logits)."""
    torch.manual_seed(1)
    model = TransformerLM.from_config(QK_CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.dim() == 2 else p.uniform_(0.3, 2.0)
    path = tmp_path_factory.mktemp("qk_ckpt") / "model.pt"
    save_checkpoint(model, None, 0, path)
    return path


@pytest.fixture(scope="module")
def qk_exported(tmp_path_factory, qk_checkpoint, tokenizer_files):
    return export_hf(qk_checkpoint, *tokenizer_files, tmp_path_factory.mktemp("qk_export") / "hf")


def test_qk_norm_model_exports_as_qwen3_with_equal_logits(qk_checkpoint, qk_exported):
    config = json.loads((qk_exported / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["architectures"] == ["Qwen3ForCausalLM"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(qk_exported, dtype=torch.float32).eval()
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    model, _ = load_model(qk_checkpoint)
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, CONFIG.vocab_size, (3, CONFIG.context_length), generator=generator)
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.std() > 1.0
    assert (ours - theirs).abs().max() <= 1e-4


def test_qwen3_export_then_import_is_bit_identical(tmp_path, qk_checkpoint, qk_exported):
    original = read_checkpoint(qk_checkpoint)
    back = read_checkpoint(import_hf(qk_exported, tmp_path / "b.pt"))
    # zero_init_proj only chose the starting weights; the imported model has the same weights and shape
    assert back["model_config"] == {**original["model_config"], "zero_init_proj": False}
    assert back["model"].keys() == original["model"].keys()
    for name, tensor in original["model"].items():
        assert torch.equal(back["model"][name], tensor), name


def test_import_of_a_qwen3_written_by_transformers(tmp_path):
    torch.manual_seed(4)
    hf_config = transformers.Qwen3Config(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, head_dim=8, max_position_embeddings=32, rms_norm_eps=1e-6,
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
    )
    hf = transformers.Qwen3ForCausalLM(hf_config).eval()
    with torch.no_grad():
        for layer in hf.model.layers:  # gains far from 1, different per dimension
            layer.self_attn.q_norm.weight.uniform_(0.3, 2.0)
            layer.self_attn.k_norm.weight.uniform_(0.3, 2.0)
    hf.save_pretrained(tmp_path / "hf")
    model, _ = load_model(import_hf(tmp_path / "hf", tmp_path / "model.pt"))
    assert model.config == ModelConfig(96, 32, 32, 2, 4, 64, rope_theta=1000.0, norm_eps=1e-6, qk_norm=True)
    ids = torch.randint(0, 96, (2, 32))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-5


def test_qwen3_with_sliding_window_is_refused():
    qwen3 = {**LLAMA, "model_type": "qwen3", "use_sliding_window": True}
    with pytest.raises(UserError, match="use_sliding_window"):
        from_llama_config(qwen3, "config.json")


def test_export_refuses_a_model_option_hf_cannot_express():
    """A ModelConfig option with no Llama/Qwen3 field is refused by name rather than silently dropped."""

    @dataclasses.dataclass
    class FutureConfig(ModelConfig):  # e.g. logit soft-capping, which neither Llama nor Qwen3 has
        logit_softcap: float = 0.0

    with pytest.raises(UserError, match="model option logit_softcap=30.0 has no equivalent") as info:
        to_llama_config(FutureConfig(**QK_CONFIG.__dict__, logit_softcap=30.0), 0, 0, torch.float32)
    assert "\n" not in str(info.value)
    written = to_llama_config(FutureConfig(**QK_CONFIG.__dict__), 0, 0, torch.float32)  # off: nothing to say
    assert written["model_type"] == "qwen3"
