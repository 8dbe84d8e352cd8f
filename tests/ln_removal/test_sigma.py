"""The σ estimator against a direct float64 computation on synthetic activations."""

from __future__ import annotations

import numpy as np
import torch

from tests.helpers import build_model
from tl_universality.ln_removal import fake_layernorms, install_fake_layernorms
from tl_universality.ln_removal.fake_ln import BOS, EOT, NORMAL
from tl_universality.ln_removal.sigma import mean_scale_by_code


def test_mean_scale_by_code():
    scale = torch.tensor([[4.0, 1.0, 2.0, 9.0], [6.0, 3.0, 8.0, 5.0]])
    codes = torch.tensor([[BOS, NORMAL, NORMAL, EOT], [BOS, NORMAL, EOT, NORMAL]])
    out = mean_scale_by_code(scale, codes, n_codes=3)
    assert out.tolist() == [11 / 4, 5.0, 8.5]
    none = mean_scale_by_code(scale[:, :3], torch.zeros(2, 3, dtype=torch.long), n_codes=3)
    assert torch.isnan(none[1:]).all()


def test_moving_average_on_synthetic_activations():
    ln = fake_layernorms(install_fake_layernorms(build_model()))["ln_final"]
    ln.tracking = True
    eps, m = ln.eps, 0.9
    rng = np.random.default_rng(0)
    expected = {"normal": None, "bos": None, "eot": None}
    for _ in range(5):
        x = rng.normal(size=(3, 6, 32)) * rng.uniform(0.5, 4.0, size=(3, 6, 1))
        x[:, 0] *= 20  # BOS has a far larger norm
        codes = np.zeros((3, 6), dtype=np.int64)
        codes[:, 0] = BOS
        codes[1, 4] = EOT
        # Direct computation: per-token std pooled over channels, then the mean per kind.
        std = np.sqrt(((x - x.mean(-1, keepdims=True)) ** 2).mean(-1) + eps)
        batch = {
            "normal": std[codes == NORMAL].mean(),
            "bos": std[codes == BOS].mean(),
            "eot": std[codes == EOT].mean(),
        }
        for key, value in batch.items():
            old = expected[key]
            expected[key] = value if old is None else m * old + (1 - m) * value
        ln.codes = torch.from_numpy(codes)
        ln(torch.from_numpy(x).float())
    np.testing.assert_allclose(float(ln.sigma[0]), expected["normal"], rtol=1e-5)
    np.testing.assert_allclose(float(ln.sigma_bos[0]), expected["bos"], rtol=1e-5)
    np.testing.assert_allclose(float(ln.sigma_eot[0]), expected["eot"], rtol=1e-5)


def test_no_tracking_when_fake_or_off():
    ln = fake_layernorms(install_fake_layernorms(build_model()))["ln_final"]
    x = torch.randn(2, 5, 32) * 3
    ln(x)  # tracking off
    assert float(ln.sigma[0]) == 1.0
    ln.tracking = True
    ln.make_fake()
    ln(x)
    assert float(ln.sigma[0]) == 1.0


def test_attention_layernorm_tracks_each_path_once_per_pass():
    fake = install_fake_layernorms(build_model())
    ln1 = fake_layernorms(fake)["blocks.0.ln1"]
    ln1.tracking = True
    toks = torch.randint(2, 64, (2, 8))
    toks[:, 0] = 0
    fake(toks)
    assert ln1.updates[NORMAL].tolist() == [1, 1]  # one update for Q/K, one for V
    torch.testing.assert_close(ln1.sigma[0], ln1.sigma[1])
