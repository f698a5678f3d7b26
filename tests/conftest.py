"""Shared fixtures: tiny real networks (random HF configs of four families, the trained equality MLP),
a word-level tokenizer, and the embedded SmolLM2-135M (loaded once per session, slow tests only)."""
from __future__ import annotations

import random

import pytest
import torch

import causalvar as cv

NAMES = ["Mary", "John", "Anna", "Tom", "Sarah", "David", "Kate", "Paul"]
WORDS = ["When", "and", "went", "to", "the", "store", "park", ",", "gave", "a", "drink", "ball", "to", "said", "then"]


def make_tokenizer():
    """A word-level fast tokenizer (offsets supported) over a small vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[EOS]"] + NAMES + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def make_lm(family: str, vocab_size: int, n_layers: int = 3, seed: int = 0):
    """A tiny randomly initialised causal LM of the given family (d=32, 4 heads)."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, num_hidden_layers=n_layers, num_attention_heads=4, hidden_size=32)
    configs = {
        "gpt2": lambda: tf.GPT2Config(vocab_size=vocab_size, n_layer=n_layers, n_head=4, n_embd=32, n_positions=64,
                                      bos_token_id=2, eos_token_id=2,
                                      resid_pdrop=0, embd_pdrop=0, attn_pdrop=0),
        "llama": lambda: tf.LlamaConfig(**common, intermediate_size=64, num_key_value_heads=2, max_position_embeddings=64),
        "qwen2": lambda: tf.Qwen2Config(**common, intermediate_size=64, num_key_value_heads=2, max_position_embeddings=64),
        "gemma2": lambda: tf.Gemma2Config(**common, intermediate_size=64, num_key_value_heads=2, head_dim=8,
                                          max_position_embeddings=64, sliding_window=4),
    }
    torch.manual_seed(seed)
    config = configs[family]()
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager" if family == "gemma2" else "sdpa")
    return model.eval()


FAMILIES = ["gpt2", "llama", "qwen2", "gemma2"]


def name_causal_model():
    """Who receives: out = the name that is not repeated (an IOI-like toy; random nets won't solve it)."""
    def sampler(rng: random.Random):
        a, b = rng.sample(NAMES, 2)
        return {"a": a, "b": b, "order": rng.choice(["ABB", "BAB"])}

    return cv.CausalModel(
        inputs={"a": NAMES, "b": NAMES, "order": ["ABB", "BAB"]},
        mechanisms={"io": lambda a, b: a, "s": lambda a, b: b,
                    "out": lambda io, s, order: io},
        sampler=sampler,
    )


def name_prompt(s):
    first, second = (s["a"], s["b"]) if s["order"] == "ABB" else (s["b"], s["a"])
    return f"When {first} and {second} went to the store , {s['b']} gave a drink to"


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session", params=FAMILIES)
def tiny_lm(request, tokenizer):
    return request.param, make_lm(request.param, len(tokenizer))


def prompt_task(adapter):
    return cv.PromptTask(adapter, name_causal_model(), prompt=name_prompt, answer=lambda v: " " + v,
                         positions={"io": cv.word("a"), "s2": cv.word("b", 2)})


@pytest.fixture(scope="session")
def equality():
    return cv.tasks.hierarchical_equality(), cv.tasks.equality_mlp()


@pytest.fixture(scope="session")
def smollm():
    return cv.load_model("smollm2-135m")
