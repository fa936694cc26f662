"""Exchange models with Hugging Face: our TransformerLM is a Llama, our tokenizer a byte-level BPE.

llama.py           config fields and weight names that correspond, RoPE's row reordering
tokenizer_json.py  our tokenizer as a `tokenizer.json` pipeline, and back
convert.py         export_hf / import_hf: whole directories and checkpoints, written atomically
"""

from NLM.min_lm.hf.convert import export_hf, import_hf

__all__ = ["export_hf", "import_hf"]
