"""The Learner with Hugging Face style models: dict batches, ModelOutput outputs, out.loss."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import fluxtrain as ft
from _tiny_models import tiny_bert
from fluxtrain.callbacks import Accuracy, Metrics


def _tiny_bert(seed: int = 0):
    return tiny_bert(seed, dropout=0.0)  # deterministic: the hand loop replays the run


def _tokens(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Sequences of 8 tokens; the label says whether token 3 occurs."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 32, (n, 8), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    ids[labels == 1, 0] = 3
    mask = torch.ones(n, 8, dtype=torch.long)
    mask[::3, 6:] = 0  # some padding, so attention_mask matters
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


def test_learner_trains_a_tiny_bert_on_dict_batches_with_metrics_equal_to_a_hand_loop():
    train = ft.DataLoader(_tokens(64, 0), batchsize=16)
    valid = ft.DataLoader(_tokens(40, 1), batchsize=16)  # batches of 16, 16 and 8
    model = _tiny_bert()
    start = copy.deepcopy(model)
    learner = ft.Learner(
        model,
        optimizer=ft.AdamW(3e-3),
        callbacks=[Metrics(Accuracy())],
        data=(train, valid),
    )  # no lossfn: the loss is the model's out.loss
    ft.fit_(learner, 2)

    hand = start
    st = ft.setup(ft.AdamW(3e-3), hand)
    expect: dict[str, list[tuple[float, float]]] = {"train": [], "valid": []}

    def mean(rows):
        n = sum(k for k, _, _ in rows)
        return (sum(k * a for k, a, _ in rows) / n, sum(k * b for k, _, b in rows) / n)

    for _ in range(2):
        hand.train()
        rows = []
        for batch in train:
            hand.zero_grad()
            out = hand(**batch)
            out.loss.backward()
            ft.update_(st, hand)
            rows.append((16, out.loss.item(), _accuracy(out.logits, batch["labels"])))
        expect["train"].append(mean(rows))
        hand.eval()
        rows = []
        with torch.no_grad():
            for batch in valid:
                out = hand(**batch)
                k = len(batch["labels"])
                rows.append((k, float(out.loss), _accuracy(out.logits, batch["labels"])))
        expect["valid"].append(mean(rows))

    for name, phase in (("train", ft.TrainingPhase()), ("valid", ft.ValidationPhase())):
        h = learner.cbstate.metrics_epoch[phase]
        want = [v for row in expect[name] for v in row]
        got = [v for row in zip(h["Loss"], h["Accuracy"]) for v in row]
        assert got == pytest.approx(want, abs=1e-6), name
    # it learned, and the step state holds the logits the metrics read
    assert expect["train"][1][0] < expect["train"][0][0]
    assert learner.step.ys_pred.shape == (8, 2) and learner.step.ys.shape == (8,)
    for p, q in zip(model.parameters(), hand.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_a_lossfn_reads_the_logits_of_a_model_output():
    model = _tiny_bert()
    batch = _tokens(6, 2)
    learner = ft.Learner(model, F.cross_entropy, ft.Descent(0.0), callbacks=[])
    state = ft.step_(learner, ft.ValidationPhase(), batch)
    out = model(**batch)
    assert torch.equal(state.ys_pred, out.logits)
    assert torch.allclose(state.loss, F.cross_entropy(out.logits, batch["labels"]))
    assert torch.allclose(state.loss, out.loss)


def test_without_lossfn_a_model_output_without_loss_is_a_clear_error():
    learner = ft.Learner(torch.nn.Linear(2, 1), callbacks=[])
    with pytest.raises(ValueError, match=r"no lossfn.*Tensor it returned has no 'loss'"):
        ft.step_(learner, ft.TrainingPhase(), (torch.ones(3, 2), torch.ones(3, 1)))


def test_dict_outputs_without_logits_and_pairs_with_dict_xs_keep_their_meaning():
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, xs: dict) -> dict:  # takes the dict as one argument
            y = self.lin(xs["a"])
            return {"y": y, "loss": y.pow(2).mean()}

    learner = ft.Learner(Net(), None, ft.Descent(0.1), callbacks=[])
    xs = {"a": torch.ones(3, 2)}
    state = ft.step_(learner, ft.TrainingPhase(), (xs, None))
    assert set(state.ys_pred) == {"y", "loss"}  # no logits: the whole output
    assert state.loss.dim() == 0 and not state.loss.requires_grad
