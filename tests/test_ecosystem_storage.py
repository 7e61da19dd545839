"""After training with fluxtrain, the ecosystem's save/scale tools see an ordinary model: the real
packages (tiny models from configs, nothing downloaded), as a user would run them."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import accelerate
import pytest
import safetensors.torch as safetensors_torch
import torch

import fluxtrain as ft
from _tiny_models import tiny_gpt2


def train_a_little(model, rule, steps=2):
    state = ft.setup(rule, model)
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        ft.update_(state, model)
    return state, ids


@pytest.mark.parametrize("rule", [ft.Adam(1e-3), ft.Lion(1e-4), ft.Momentum(1e-3)], ids=repr)
def test_safetensors_save_model_works_after_training_and_reloads_every_tensor(tmp_path, rule):
    model = tiny_gpt2()
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    train_a_little(model, rule)
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_model(model, str(path))
    fresh = tiny_gpt2()
    _missing, unexpected = safetensors_torch.load_model(fresh, str(path))
    assert not unexpected
    for (n, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), n
    # the tie survives training
    assert model.transformer.wte.weight is model.lm_head.weight


def test_accelerate_save_model_and_state_keep_and_restore_every_tensor(
    tmp_path, fresh_accelerate_state
):
    model = tiny_gpt2()
    acc = accelerate.Accelerator(cpu=True, project_dir=str(tmp_path))
    model = acc.prepare(model)
    _state, _ids = train_a_little(model, ft.AdamW(1e-3, lambd=0.01))
    acc.save_model(model, str(tmp_path / "saved"))
    saved = safetensors_torch.load_file(str(tmp_path / "saved" / "model.safetensors"))
    own = {k: v for k, v in model.state_dict().items()}
    # every tensor was written (ties are stored once, as transformers does)
    assert set(own) - set(saved) <= {"lm_head.weight"}
    for k, v in saved.items():
        assert torch.equal(v, own[k]), k
    acc.save_state(str(tmp_path / "ckpt"))
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    acc.load_state(str(tmp_path / "ckpt"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_resize_token_embeddings_after_setup_fails_naming_the_parameter():
    model = tiny_gpt2()
    state, ids = train_a_little(model, ft.Adam(1e-3), steps=1)
    model.resize_token_embeddings(60)
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    with pytest.raises(ValueError, match=r"wte\.weight.*\(60, 16\)"):
        ft.update_(state, model)
    # nothing changed; with a fresh state training goes on
    state = ft.setup(ft.Adam(1e-3), model)
    before = model.transformer.wte.weight.detach().clone()
    ft.update_(state, model)
    assert not torch.equal(model.transformer.wte.weight, before)
