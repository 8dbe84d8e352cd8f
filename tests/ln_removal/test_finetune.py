"""Fine-tuning: auxiliary loss, the end-to-end run, its saved result, checkpoints and resume."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import build_model
from tests.ln_removal.builders import FAST, tokens
from tl_universality.core.errors import CheckpointMismatchError
from tl_universality.ln_removal import LNRemovalResult, remove_layernorm, std_aux_loss

RUN = dict(steps=14, lr_warmup=2, lr=3e-3, batch_size=4, schedule=FAST, progress=False)


def test_aux_loss_is_zero_when_stds_are_equal():
    x = torch.randn(3, 6, 32, dtype=torch.float64)
    x = x - x.mean(-1, keepdim=True)
    x = 1.7 * x / x.std(-1, unbiased=False, keepdim=True)
    assert float(std_aux_loss(x)) < 1e-20


def test_aux_loss_target_carries_no_gradient():
    x = (torch.randn(2, 5, 8, dtype=torch.float64) * torch.rand(2, 5, 1) * 3).requires_grad_()
    std_aux_loss(x, eps=1e-5).backward()
    # Oracle: the same loss with the mean std as a constant number.
    y = x.detach().clone().requires_grad_()
    std = (y.var(-1, unbiased=False) + 1e-5).sqrt()
    target = float(std.detach().mean())
    ((std - target) ** 2).mean().backward()
    torch.testing.assert_close(x.grad, y.grad)


def test_aux_loss_hessian_shows_the_detached_target():
    # For MSE to the mean the first derivative through the mean vanishes anyway; the second does
    # not. Residual rows a_i * (unit-std row), eps 0: std_i = a_i, loss = mean((a - mean(a))²).
    # A detached mean gives the Hessian (2/n) I; an attached one would give (2/n)(I - 11ᵀ/n).
    n = 5
    base = torch.randn(n, 8, dtype=torch.float64)
    base = base - base.mean(-1, keepdim=True)
    base = base / base.std(-1, unbiased=False, keepdim=True)
    a = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5], dtype=torch.float64)
    hessian = torch.autograd.functional.hessian(
        lambda a: std_aux_loss((a[:, None] * base)[None], eps=0.0), a
    )
    torch.testing.assert_close(hessian, 2 / n * torch.eye(n, dtype=torch.float64))


def test_end_to_end_result_saves_and_loads(tmp_path):
    model = build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    held = tokens(6, 16, seed=1)
    result = remove_layernorm(model, tokens(40, 16), held_out=held, aux_loss_weight=0.05, **RUN)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    plain = result.model
    assert plain.cfg.normalization_type is None
    summary = result.summary()
    assert summary["steps"] == 14 and summary["tokens"] == 14 * 4 * 16 and summary["ln_free"]
    with torch.no_grad():
        assert summary["held_out_loss_before"] == pytest.approx(
            float(model(held, return_type="loss")), rel=1e-5
        )
        assert summary["held_out_loss_after"] == pytest.approx(
            float(plain(held, return_type="loss")), rel=1e-5
        )
    assert (result.history["aux_loss"] > 0).all()
    assert list(result.history.columns) == [
        "step",
        "loss",
        "aux_loss",
        "lr",
        "grad_norm",
        "n_fake",
        "events",
        "tokens",
        "seconds",
    ]
    loaded = LNRemovalResult.load(result.save(tmp_path / "run"))
    assert loaded.summary() == summary
    toks = tokens(2, 16, seed=3)
    with torch.no_grad():
        assert torch.equal(loaded.model(toks), plain(toks))
    fig = result.plot()
    assert fig.axes and len(fig.axes[0].lines) > 10  # loss curve + one line per event


def test_held_out_defaults_to_a_split_of_the_tokens():
    result = remove_layernorm(build_model(), tokens(40, 16), **RUN)
    assert result.summary()["tokens"] == 14 * 4 * 16


def test_keep_layernorm_is_the_control():
    result = remove_layernorm(build_model(), tokens(40, 16), keep_layernorm=True, **RUN)
    assert result.model.cfg.normalization_type == "LN"
    assert set(result.history["n_fake"]) == {0}


class _Stop(Exception):
    pass


def _stop_at(step):
    def callback(progress):
        if progress.step == step:
            raise _Stop

    return callback


def test_resume_equals_uninterrupted(tmp_path):
    model, train, held = build_model(), tokens(40, 16), tokens(6, 16, seed=1)
    whole = remove_layernorm(
        model, train, held_out=held, checkpoint_dir=tmp_path / "a", checkpoint_every=5, **RUN
    )
    with pytest.raises(_Stop):
        remove_layernorm(
            model,
            train,
            held_out=held,
            checkpoint_dir=tmp_path / "b",
            checkpoint_every=5,
            callback=_stop_at(7),
            **RUN,
        )
    resumed = remove_layernorm(
        model, train, held_out=held, checkpoint_dir=tmp_path / "b", checkpoint_every=5, **RUN
    )
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert whole.history["loss"].tolist() == resumed.history["loss"].tolist()
    assert resumed.summary()["held_out_loss_after"] == whole.summary()["held_out_loss_after"]


def test_resume_with_other_settings_or_data_is_refused(tmp_path):
    model, train, held = build_model(), tokens(40, 16), tokens(6, 16, seed=1)
    remove_layernorm(model, train, held_out=held, checkpoint_dir=tmp_path, **RUN)
    with pytest.raises(
        CheckpointMismatchError, match=r"lr \(checkpoint 0.003, now 0.002\).*Fix: delete"
    ):
        remove_layernorm(
            model, train, held_out=held, checkpoint_dir=tmp_path, **{**RUN, "lr": 2e-3}
        )
    with pytest.raises(CheckpointMismatchError, match="different train_tokens"):
        remove_layernorm(
            model, tokens(40, 16, seed=5), held_out=held, checkpoint_dir=tmp_path, **RUN
        )
    with pytest.raises(CheckpointMismatchError, match="different model"):
        remove_layernorm(build_model(seed=3), train, held_out=held, checkpoint_dir=tmp_path, **RUN)


class _Run:
    def __init__(self):
        self.rows, self.summary = [], {}

    def log(self, row, step=None):
        self.rows.append((step, row))


def test_wandb_run_gets_losses_and_fake_paths():
    run = _Run()
    remove_layernorm(build_model(), tokens(40, 16), wandb=run, **RUN)
    assert len(run.rows) == 14
    step, last = run.rows[-1]
    assert step == 13 and last["n_fake"] == 7 and last["fake/blocks.0.ln1.v"] == 1
    assert run.rows[0][1]["fake/ln_final"] == 0
    assert run.summary["ln_removal/steps"] == 14
