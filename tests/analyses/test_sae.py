"""SAE training, latent universality, neuron ↔ latent correlation, decoder similarity and the SAE
unit table, each checked against an independent computation (numpy/scipy on collected
activations, or the neuron analysis an identity SAE must reproduce)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from scipy import stats

from tests.helpers import build_model, build_sae, random_tokens
from tl_universality.analyses.correlation import correlate
from tl_universality.analyses.sae import (
    SAEUnits,
    decoder_similarity,
    latent_universality,
    load_pretrained_sae,
    neuron_latent_correlation,
    sae_unit_stats,
    train_sae,
)
from tl_universality.units import PerModel
from tl_universality.units.activations import collect_activations

sae_lens = pytest.importorskip("sae_lens")

BOS = 0
EXACT = dict(product_dtype=torch.float64, keep_matrix=torch.float64, progress=False)


def tokens(n: int = 8, seq: int = 16, seed: int = 0) -> torch.Tensor:
    return random_tokens(n, seq, seed, bos=BOS)


def make_sae(d_in: int, d_sae: int, hook: str, seed: int = 0):
    return build_sae(d_in, d_sae, hook, seed, enc_bias=0.1)  # most random latents stay alive


def identity_sae(d: int, hook: str):
    sae = make_sae(d, d, hook)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def corrcoef(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Float64 Pearson correlation of every column of x with every column of y (NaN if dead)."""
    x, y = x.double().numpy(), y.double().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(x.T, y.T)[: x.shape[1], x.shape[1] :]


def test_latent_correlations_match_numpy_on_collected_latents():
    models = [build_model(seed=0), build_model(seed=1)]
    hook = "blocks.0.hook_resid_post"
    saes = [make_sae(32, 48, hook, seed=0), make_sae(32, 48, hook, seed=1)]
    toks = tokens()
    result = latent_universality(models, saes, toks, bos_token_id=BOS, n_draws=1, **EXACT)

    lat_a, lat_b = collect_activations(
        models, toks, units=PerModel([SAEUnits(s) for s in saes]), bos_token_id=BOS, progress=False
    )
    oracle = corrcoef(lat_a, lat_b)
    assert result.units.widths == (48,) and result.n_tokens == lat_a.shape[0]
    np.testing.assert_allclose(result.matrix(0).numpy(), oracle, atol=1e-6, equal_nan=True)
    alive = ~np.isnan(oracle).all(1)
    assert alive.sum() > 24  # the test means something: most latents fire
    np.testing.assert_allclose(
        result.max_corr[0].numpy()[alive], np.nanmax(oracle[alive], 1), atol=1e-6
    )


def test_identity_sae_latents_have_the_neurons_correlations():
    # On a ReLU model, latents of an SAE with W_enc = W_dec = I at mlp.hook_pre are exactly the
    # neurons' hook_post values, so every statistic must equal the neuron analysis.
    models = [build_model(act_fn="relu", seed=0), build_model(act_fn="relu", seed=1)]
    saes = [identity_sae(64, "blocks.1.mlp.hook_pre") for _ in models]
    toks = tokens()
    latents = latent_universality(models, saes, toks, bos_token_id=BOS, n_draws=2, **EXACT)
    neurons = correlate(
        models[0], models[1:], toks, units="blocks.1.mlp.hook_post", bos_token_id=BOS,
        n_draws=2, **EXACT,
    )  # fmt: skip
    np.testing.assert_allclose(
        latents.matrix(0).numpy(), neurons.matrix(0).numpy(), atol=1e-6, equal_nan=True
    )
    for name in ("max_corr", "baseline_draws"):
        np.testing.assert_allclose(
            getattr(latents, name).numpy(), getattr(neurons, name).numpy(), atol=1e-6,
            equal_nan=True,
        )  # fmt: skip
    alive = ~latents.dead
    assert alive.sum() > 32
    assert torch.equal(latents.argmax[:, alive], neurons.argmax[:, alive])
    np.testing.assert_allclose(
        latents.excess_correlation.numpy(), neurons.excess_correlation.numpy(), atol=1e-6,
        equal_nan=True,
    )  # fmt: skip


def test_neuron_latent_correlation_matches_numpy_both_ways():
    model = build_model(seed=0)
    sae = make_sae(32, 40, "blocks.0.hook_resid_post")
    toks = tokens()
    nl = neuron_latent_correlation(model, sae, toks, bos_token_id=BOS, n_draws=1, top_k=3, **EXACT)
    latents, neurons = collect_activations(
        [model, model],
        toks,
        units=PerModel([SAEUnits(sae), None]),
        bos_token_id=BOS,
        progress=False,
    )
    oracle = corrcoef(latents, neurons)  # [latents, neurons of both layers]
    np.testing.assert_allclose(nl.by_latent.matrix(0).numpy(), oracle, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(nl.by_neuron.matrix(0).numpy(), oracle.T, atol=1e-6, equal_nan=True)

    latent = int(np.nanargmax(np.nanmax(oracle, 1)))
    top = nl.neurons_of_latent(latent)
    best = int(np.nanargmax(oracle[latent]))
    assert (top.loc[0, "layer"], top.loc[0, "neuron"]) == divmod(best, 64)
    assert top.loc[0, "corr"] == pytest.approx(oracle[latent, best], abs=1e-6)
    assert len(top) == 3 and top["corr"].is_monotonic_decreasing

    carried = nl.latents_of_neuron(*divmod(best, 64))
    assert carried.loc[0, "corr"] == pytest.approx(np.nanmax(oracle[:, best]), abs=1e-6)
    assert set(carried["layer"]) == {0}  # the SAE's block


def test_identity_sae_matches_each_neuron_with_itself():
    model = build_model(act_fn="relu")
    sae = identity_sae(64, "blocks.0.mlp.hook_pre")
    nl = neuron_latent_correlation(
        model, sae, tokens(), neurons="blocks.0.mlp.hook_post", bos_token_id=BOS, baseline=None,
        progress=False,
    )  # fmt: skip
    alive = ~nl.by_latent.dead
    assert alive.sum() > 32
    assert torch.equal(nl.by_latent.argmax[0, alive], torch.arange(64)[alive])
    np.testing.assert_allclose(nl.by_latent.max_corr[0, alive].numpy(), 1.0, atol=1e-6)


def test_decoder_similarity_matches_a_direct_cosine():
    a = make_sae(32, 24, "blocks.0.hook_resid_post", seed=0)
    b = make_sae(32, 16, "blocks.0.hook_resid_post", seed=1)
    pairs = np.array([[0, 3], [5, 5], [23, 0], [7, 15]])
    table = decoder_similarity(a, b, pairs)
    wa, wb = a.W_dec.detach().double().numpy(), b.W_dec.detach().double().numpy()
    va, vb = wa[pairs[:, 0]], wb[pairs[:, 1]]
    direct = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
    np.testing.assert_allclose(table["dec_cos"].to_numpy(), direct, atol=1e-12)
    assert table["random_dec_cos"].abs().max() < 1

    # Through the unembeddings: cosine of the centred direct logit effects.
    models = (build_model(seed=0), build_model(seed=1))
    table = decoder_similarity(a, b, pairs, models=models)
    la = va @ models[0].W_U.detach().double().numpy()
    lb = vb @ models[1].W_U.detach().double().numpy()
    la, lb = la - la.mean(1, keepdims=True), lb - lb.mean(1, keepdims=True)
    direct = (la * lb).sum(1) / np.linalg.norm(la, axis=1) / np.linalg.norm(lb, axis=1)
    np.testing.assert_allclose(table["dec_cos"].to_numpy(), direct, atol=1e-12)


def test_decoder_similarity_reads_the_match_from_a_correlation_result():
    models = [build_model(seed=0), build_model(seed=1)]
    hook = "blocks.0.hook_resid_post"
    saes = [make_sae(32, 24, hook, seed=0), make_sae(32, 24, hook, seed=1)]
    result = latent_universality(models, saes, tokens(), bos_token_id=BOS, n_draws=1,
                                 progress=False)  # fmt: skip
    table = decoder_similarity(saes[0], saes[1], result)
    assert table["latent_b"].tolist() == result.argmax[0].tolist()
    np.testing.assert_array_equal(table["max_corr"].to_numpy(), result.max_corr[0].numpy())
    wa, wb = saes[0].W_dec.detach().double(), saes[1].W_dec.detach().double()
    j = int(result.argmax[0, 4])
    assert table.loc[4, "dec_cos"] == pytest.approx(
        float(torch.nn.functional.cosine_similarity(wa[4], wb[j], dim=0)), abs=1e-12
    )
    with pytest.raises(ValueError, match="latents"):
        decoder_similarity(saes[0], make_sae(32, 8, hook), result)


def test_sae_unit_table_matches_numpy_and_scipy():
    model = build_model(seed=0)
    sae = make_sae(32, 40, "blocks.1.hook_mlp_out")
    toks = tokens()
    table = sae_unit_stats(model, sae, toks, bos_token_id=BOS)
    w_dec = sae.W_dec.detach().double().numpy()
    w_u = model.W_U.detach().double().numpy()
    cos = (w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True)) @ (
        w_u / np.linalg.norm(w_u, axis=0, keepdims=True)
    )
    np.testing.assert_allclose(table["dec_norm"], np.linalg.norm(w_dec, axis=1), rtol=1e-12)
    np.testing.assert_allclose(table["vocab_mean"], cos.mean(1), atol=1e-12)
    np.testing.assert_allclose(table["vocab_var"], cos.var(1), atol=1e-12)
    np.testing.assert_allclose(table["vocab_skew"], stats.skew(cos, axis=1), atol=1e-9)
    np.testing.assert_allclose(table["vocab_kurt"], stats.kurtosis(cos, axis=1, fisher=False),
                               atol=1e-9)  # fmt: skip

    (latents,) = collect_activations(model, toks, units=SAEUnits(sae), bos_token_id=BOS,
                                     progress=False)  # fmt: skip
    x = latents.double().numpy()
    assert table.attrs["n_tokens"] == x.shape[0]
    np.testing.assert_allclose(table["act_freq"], (x > 0).mean(0), atol=0)
    np.testing.assert_allclose(table["post_mean"], x.mean(0), atol=1e-9)
    np.testing.assert_allclose(table["post_var"], x.var(0), atol=1e-9)
    live = x.var(0) > 0
    np.testing.assert_allclose(table["post_kurt"][live], stats.kurtosis(x[:, live], fisher=False),
                               rtol=1e-6)  # fmt: skip
    assert list(table[["layer", "neuron"]].iloc[3]) == [1, 3]

    # A site outside the residual basis has no vocabulary composition.
    inner = sae_unit_stats(model, make_sae(64, 16, "blocks.0.mlp.hook_post"))
    assert inner["vocab_kurt"].isna().all() and inner["dec_norm"].notna().all()


def _mse(sae, acts: torch.Tensor) -> float:
    with torch.no_grad():
        return float((sae.decode(sae.encode(acts)) - acts).pow(2).sum(-1).mean())


def test_train_sae_caches_reconstructs_and_rebuilds(tmp_path, monkeypatch):
    model = build_model(act_fn="relu", seed=0)
    hook = "blocks.1.hook_mlp_out"
    train, held = tokens(64, 32, seed=1), tokens(16, 32, seed=2)
    settings = dict(d_sae=64, total_tokens=8192, batch_size=256, lr=1e-2, l1_coefficient=1.0,
                    bos_token_id=BOS,
                    cache_dir=tmp_path, progress=False)  # fmt: skip
    before = torch.random.get_rng_state()
    sae = train_sae(model, train, hook, **settings)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
    assert isinstance(sae, sae_lens.StandardSAE) and not sae.training
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.metadata.hook_name) == (32, 64, hook)
    (folder,) = (p for p in tmp_path.iterdir() if not p.name.startswith("."))  # not the lock
    assert (tmp_path / f".{folder.name}.lock").is_file()
    assert {p.name for p in folder.iterdir()} == {"cfg.json", "sae_weights.safetensors",
                                                  "train.json", "manifest.json"}  # fmt: skip

    (acts,) = collect_activations(model, held, units=hook, bos_token_id=BOS, progress=False)
    total = float((acts - acts.mean(0)).pow(2).sum(-1).mean())
    trained = _mse(sae, acts)
    assert trained < 0.5 * _mse(make_sae(32, 64, hook, seed=3), acts)
    assert trained < 0.5 * total  # explains most of the variance of unseen tokens

    # The same settings load from the cache: no training, identical weights.
    def no_training(self):
        raise AssertionError("trained again instead of loading the cache")

    with monkeypatch.context() as m:
        m.setattr(sae_lens.SAETrainer, "fit", no_training)
        again = train_sae(model, train, hook, **settings)
    for name, value in sae.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name

    # A damaged cache entry is rebuilt, with a warning, to the same weights.
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.warns(UserWarning, match="damaged"):
        rebuilt = train_sae(model, train, hook, **settings)
    torch.testing.assert_close(rebuilt.W_dec, sae.W_dec)

    # A flipped byte inside the weights still parses as safetensors: the checksum finds it.
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # a high byte of the last float: another valid number
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="does not match its checksum"):
        rebuilt = train_sae(model, train, hook, **settings)
    for name, value in sae.state_dict().items():
        assert torch.equal(value, rebuilt.state_dict()[name]), name
    # So does a changed record (e.g. another key written by hand).
    record = folder / "train.json"
    record.write_text(record.read_text().replace('"seed": 0', '"seed": 1'))
    with pytest.warns(UserWarning, match=r"train\.json does not match its checksum"):
        train_sae(model, train, hook, **settings)

    # Other settings are another cache entry.
    train_sae(model, train, hook, **{**settings, "total_tokens": 2048})
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2


def test_train_sae_rejects_bad_hooks_and_architectures(tmp_path):
    model = build_model()
    with pytest.raises(ValueError, match="architecture"):
        train_sae(model, tokens(), "blocks.0.hook_resid_post", d_sae=8, architecture="nope",
                  cache_dir=tmp_path)  # fmt: skip
    with pytest.raises(Exception, match="blocks.0.hook_resid_psot"):
        train_sae(model, tokens(), "blocks.0.hook_resid_psot", d_sae=8, bos_token_id=BOS,
                  cache_dir=tmp_path)  # fmt: skip


@pytest.mark.network
@pytest.mark.skipif(
    os.environ.get("TL_UNIVERSALITY_NETWORK") != "1",
    reason="needs the Hugging Face hub; set TL_UNIVERSALITY_NETWORK=1 to run",
)
def test_load_pretrained_sae_by_release_name():
    sae = load_pretrained_sae("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    assert SAEUnits(sae).hook_name == "blocks.8.hook_resid_pre"
    assert sae.cfg.d_in == 768
