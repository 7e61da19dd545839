"""Tiny Hugging Face models built from configs (nothing downloaded), shared by the tests that use
the real packages."""

from __future__ import annotations

import os

import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_bert(seed: int = 0, dropout: float = 0.1):
    """A 1-layer BertForSequenceClassification with 2 labels over a 32-token vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertForSequenceClassification(config)


def tiny_gpt2(seed: int = 0):
    """A 2-layer GPT2LMHeadModel over a 50-token vocabulary, its head tied to the embedding."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, tie_word_embeddings=True
    )
    return GPT2LMHeadModel(config)
