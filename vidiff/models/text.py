"""Text encoder: a transformers CLIP text model + tokenizer read from a local folder, never a hub."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch


SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


def word_normalizer():
    """Unicode NFKC, lower case, punctuation to spaces: "A red circle, moving right." == "a red circle moving right"."""
    from tokenizers import Regex, normalizers

    return normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                 normalizers.Replace(Regex(r"[^\w\s]"), " ")])


def word_tokenizer(words, max_length: int = 16):
    """A lower-casing word-level `PreTrainedTokenizerFast` over `words`, built in memory (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + tuple(dict.fromkeys(w.lower() for w in words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = word_normalizer()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<bos>", eos_token="<eos>", model_max_length=max_length)


class TextEncoder:
    """Prompts -> `b n d` hidden states (the UNet's `encoder_hidden_states`)."""

    def __init__(self, model, tokenizer, max_length: int | None = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length = max_length or min(tokenizer.model_max_length, model.config.max_position_embeddings)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, variant: str | None = None) -> "TextEncoder":
        """Load `text_encoder/` (safetensors; `variant="fp16"`: its fp16 file) and `tokenizer/` from a model folder, offline."""
        from transformers import AutoTokenizer, CLIPTextModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path = Path(path)
        enc_dir, tok_dir = path / "text_encoder", path / "tokenizer"
        for d in (enc_dir, tok_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"model folder {str(path)!r} has no {d.name}/")
        from vidiff.models.weights import folder_variant

        model = CLIPTextModel.from_pretrained(enc_dir, local_files_only=True, use_safetensors=True,
                                              variant=folder_variant(enc_dir, variant)).float()
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        return cls(model, tokenizer)

    @classmethod
    def build(cls, words, dim: int = 32, layers: int = 2, heads: int = 2, max_length: int = 16,
              seed: int = 0) -> "TextEncoder":
        """A small random CLIP text model over a word-level vocabulary (for models trained from scratch)."""
        from transformers import CLIPTextConfig, CLIPTextModel

        tokenizer = word_tokenizer(words, max_length)
        cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=2 * dim,
                             num_hidden_layers=layers, num_attention_heads=heads,
                             max_position_embeddings=max_length, pad_token_id=0, bos_token_id=2, eos_token_id=3)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = CLIPTextModel(cfg)
        return cls(model, tokenizer)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write `text_encoder/` and `tokenizer/` into a model folder."""
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model.save_pretrained(Path(path) / "text_encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(Path(path) / "tokenizer")

    @property
    def dim(self) -> int:
        """Width of the hidden states."""
        return self.model.config.hidden_size

    def to(self, device=None, dtype=None) -> "TextEncoder":
        """Move the model."""
        self.model.to(device=device, dtype=dtype)
        return self

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of `prompt` that the tokenizer maps to its unknown token."""
        unk = self.tokenizer.unk_token_id
        if unk is None:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and backend.normalizer is not None:
            prompt = backend.normalizer.normalize_str(prompt)     # judge words as the model will see them
        return [w for w in prompt.split() if unk in self.tokenizer(w, add_special_tokens=False)["input_ids"]]

    @torch.no_grad()
    def __call__(self, prompts: list[str], warn_unknown: bool = True) -> torch.Tensor:
        """Encode a list of prompts, padded to `max_length`."""
        if warn_unknown:
            for p in prompts:
                unknown = self.unknown_words(p)
                if unknown:
                    warnings.warn(f"words outside the model's vocabulary are ignored: {', '.join(unknown)}")
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")["input_ids"]
        # under offload (accelerate hooks) the hook moves the ids to where the model runs
        device = "cpu" if hasattr(self.model, "_hf_hook") else next(self.model.parameters()).device
        return self.model(ids.to(device))[0]
