"""ft.TorchOptimizer inside the real tools: transformers' Trainer, Lightning, accelerate.

Tiny models built from configs, on the CPU, nothing downloaded.
"""

from __future__ import annotations

import copy

import pytest
import torch

import fluxtrain as ft
from _tiny_models import tiny_bert


def _tiny_bert(seed: int = 0):
    return tiny_bert(seed)


class _Tokens(torch.utils.data.Dataset):
    """Sequences of 8 tokens; the label is whether token 3 occurs (learnable in a few steps)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(4, 32, (n, 8), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        self.ids[self.labels == 1, 0] = 3

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": self.labels[i],
        }


def test_hf_trainer_fine_tunes_a_tiny_bert_and_leaves_follow_its_linear_schedule(
    tmp_path, fresh_accelerate_state
):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = _tiny_bert()
    opt = ft.TorchOptimizer(model, ft.AdamW(0.01, lambd=0.01))
    pairs = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            etas = {leaf.rule.eta for leaf in ft.leaves(opt.opt_state)}
            pairs.append((etas, kw["lr_scheduler"].get_last_lr()[0]))

    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=20,
        per_device_train_batch_size=16,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Tokens(320),
        optimizers=(opt, None),
        callbacks=[Watch()],
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 20
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, losses
    # The default linear schedule (created by the Trainer on our optimizer) drove the leaves.
    assert len(pairs) == 20
    for etas, lr in pairs:
        assert etas == {lr}
    lrs = [lr for _, lr in pairs]
    assert lrs[0] == pytest.approx(0.01 * 19 / 20) and lrs[-1] == 0.0
    assert {leaf.rule.eta for leaf in ft.leaves(opt.opt_state)} == {
        trainer.lr_scheduler.get_last_lr()[0]
    }


def _lightning_data(n: int = 5):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(n * 4, 3, generator=g), torch.randn(n * 4, 1, generator=g)
    return x, y


def _small(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def test_lightning_fit_changes_parameters_as_a_hand_loop_with_the_same_rule():
    import pytorch_lightning as pl

    x, y = _lightning_data()
    start = _small()

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = copy.deepcopy(start)

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            return torch.nn.functional.mse_loss(self.net(xb), yb)

        def configure_optimizers(self):
            opt = ft.TorchOptimizer(self.net, ft.Adam(0.01))
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    module = Module()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    trainer = pl.Trainer(
        max_steps=5,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    assert trainer.global_step == 5

    hand = copy.deepcopy(start)
    st = ft.setup(ft.Adam(0.01), hand)
    for k, (xb, yb) in enumerate(data):
        ft.adjust_(st, 0.01 * 0.5 ** (k // 2))
        hand.zero_grad()
        torch.nn.functional.mse_loss(hand(xb), yb).backward()
        ft.update_(st, hand)
    for p, q in zip(module.net.parameters(), hand.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0)
    assert not torch.allclose(module.net[0].weight, start[0].weight)
    lightning_opt = trainer.optimizers[0]
    assert lightning_opt.opt_state[0].weight.rule.eta == 0.01 * 0.5 ** (5 // 2)


def test_lightnings_wrapper_class_without_init_reads_and_writes_the_same_optimizer():
    from pytorch_lightning.core.optimizer import LightningOptimizer

    model = _small()
    opt = ft.TorchOptimizer(model, ft.Adam(0.01))
    wrapped = LightningOptimizer(opt)  # an instance of a generated subclass of TorchOptimizer
    assert isinstance(wrapped, ft.TorchOptimizer) and "_core" not in vars(wrapped)
    wrapped.param_groups[0]["lr"] = 0.5
    assert opt.opt_state[0].weight.rule.eta == 0.5
    model(torch.ones(2, 3)).sum().backward()
    wrapped.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    sd = wrapped.state_dict()
    wrapped.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.5 and wrapped.opt_state is opt.opt_state


def _accelerate_run(state_dir, save_after: int | None, load: bool, steps: int):
    from accelerate import Accelerator

    x, y = _lightning_data(6)
    accelerator = Accelerator(cpu=True)
    model = _small()
    opt = ft.TorchOptimizer(model, ft.AdamW(0.01, lambd=0.1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    model, opt, sched = accelerator.prepare(model, opt, sched)
    if load:
        accelerator.load_state(str(state_dir))
    batches = list(zip(x.split(4), y.split(4)))
    start = 0 if not load else save_after
    for k in range(start, steps):
        xb, yb = batches[k]
        opt.zero_grad()
        accelerator.backward(torch.nn.functional.mse_loss(model(xb), yb))
        opt.step()
        sched.step()
        if save_after is not None and not load and k + 1 == save_after:
            accelerator.save_state(str(state_dir))
    return accelerator.unwrap_model(model), opt


def test_accelerate_save_and_load_state_then_one_more_step_equals_the_uninterrupted_run(
    tmp_path, fresh_accelerate_state
):
    from accelerate.state import AcceleratorState, GradientState

    uninterrupted, opt = _accelerate_run(tmp_path / "ckpt", save_after=3, load=False, steps=4)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    resumed, opt2 = _accelerate_run(tmp_path / "ckpt", save_after=3, load=True, steps=4)
    for p, q in zip(uninterrupted.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.01 / 5
