"""Tiny random-weight models of each supported family, built from configs (no downloads)."""

import torch
import transformers as T

FAMILIES = {
    "gpt2": lambda: T.GPT2Config(
        n_layer=3,
        n_embd=32,
        n_head=4,
        vocab_size=128,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    ),
    "llama": lambda: T.LlamaConfig(
        num_hidden_layers=3,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    ),
    "mistral": lambda: T.MistralConfig(
        num_hidden_layers=3,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    ),
    "qwen2": lambda: T.Qwen2Config(
        num_hidden_layers=3,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    ),
    "gemma": lambda: T.GemmaConfig(
        num_hidden_layers=3,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=128,
    ),
    "gpt_neox": lambda: T.GPTNeoXConfig(
        num_hidden_layers=3,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        vocab_size=128,
    ),
    "bert": lambda: T.BertConfig(
        num_hidden_layers=3,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        vocab_size=128,
    ),
}


def tiny_model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = FAMILIES[family]()
    auto = T.AutoModelForMaskedLM if family == "bert" else T.AutoModelForCausalLM
    return auto.from_config(config).eval()


def tiny_tokenizer():
    """A word-level tokenizer: <s>=0, </s>=1, <pad>=2, <unk>=3, then lowercase words a..z-ish."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = (
        ["<s>", "</s>", "<pad>", "<unk>"]
        + [f"w{i}" for i in range(100)]
        + list("abcdefghijklmnopqrstuvwx")
    )
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def tiny_lm(family: str = "llama"):
    from saelab.data.models import LanguageModel

    return LanguageModel(
        model=tiny_model(family), tokenizer=tiny_tokenizer(), name=f"tiny-{family}"
    )


def saved_model(path, family: str = "llama"):
    """tiny_model(family) and tiny_tokenizer() saved into the directory `path` (returned), a
    model directory load_model reads."""
    tiny_model(family).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
