"""Variance-reduction explanations and family labels.

Oracles: the docs/concepts.md formula computed with a pandas groupby on activations cached by
``run_with_cache``; neurons planted with known functions of the input (overwritten through a
permanent hook, read back through the normal streaming path); one batch vs many.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

import tl_universality  # noqa: F401  (registers model.universality)
from tl_universality.analyses.families import (
    VarianceReductionStats,
    explain,
    families,
    family_counts,
    label_families,
    neuron_frame,
    top_activations,
    variance_reduction,
    variance_reduction_stream,
)
from tl_universality.analyses.features import (
    FeatureContext,
    FeatureSet,
    PositionFeatures,
    UserFeature,
    default_features,
    normalise_token,
)
from tl_universality.core.errors import EmptyTokenSourceError
from tl_universality.units.activations import ActivationBatch, collect_activations

VOCAB = [
    "<|endoftext|>", " the", "The", "the", " THE", " cat", " dog", " a", "A", " an", " apple",
    " and", ",", ".", " 1999", " 42", " January", " Monday", " he", " she", " it", " is", " was",
    " run", " running", " quickly", " tree", " to", " two", " x", " y", "(", ")", "\n", " zebra",
    " be", " big", " blue", " book", "<script>alert(1)</script>",
]  # fmt: skip
BOS, N_CTX, D_MLP = 0, 32, 16
NORM = np.array([normalise_token(s) for s in VOCAB])

# Planted neurons of layer 0 (the rest keep the model's own activations).
UNIGRAM_THE, PREV_CAT, POSITION, RANDOM, FIRST_A, DEAD, PARSER = range(7)


def parser_label(toks: torch.Tensor) -> torch.Tensor:
    """A stand-in for a parser's label of every position (a fixed function of token and place)."""
    pos = torch.arange(toks.shape[1]).expand(toks.shape)
    return (toks * 7 + pos * 3) % 5 == 0


def noise(toks: torch.Tensor) -> torch.Tensor:
    """Deterministic pseudo-random numbers per (token, previous token, position)."""
    pos = torch.arange(toks.shape[1]).expand(toks.shape).double()
    x = torch.sin(toks.double() * 12.9898 + pos * 78.233 + torch.roll(toks, 1, 1) * 4.1414)
    return torch.frac(x.abs() * 43758.5453).float() - 0.5


def stream(n: int = 48, seed: int = 0) -> torch.Tensor:
    toks = torch.randint(1, len(VOCAB), (n, N_CTX), generator=torch.Generator().manual_seed(seed))
    toks[:, 0] = BOS
    return toks


def planted_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=D_MLP, d_vocab=len(VOCAB),
        n_ctx=N_CTX, act_fn="gelu_new", seed=0,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    seen: dict[str, torch.Tensor] = {}
    # The embedding's input is the token batch: remember it for the hook below.
    model.embed.register_forward_pre_hook(lambda mod, args: seen.__setitem__("tokens", args[0]))

    def plant(act: torch.Tensor, hook) -> torch.Tensor:
        toks = seen["tokens"]
        ids = toks.numpy()
        act = act.clone()
        prev = torch.roll(toks, 1, 1)
        prev[:, 0] = -1
        act[..., UNIGRAM_THE] = torch.from_numpy(NORM[ids] == "the").float()
        act[..., PREV_CAT] = 2.0 * (prev == VOCAB.index(" cat")).float() - 0.5
        act[..., POSITION] = 3.0 + torch.arange(toks.shape[1]).float().expand(toks.shape) / N_CTX
        act[..., RANDOM] = noise(toks)
        act[..., FIRST_A] = torch.from_numpy(np.char.startswith(NORM[ids].astype(str), "a"))
        act[..., DEAD] = 0.25
        act[..., PARSER] = parser_label(toks).float() + 0.1 * noise(toks)
        return act

    model.add_hook("blocks.0.mlp.hook_post", plant, is_permanent=True)
    return model


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    return planted_model()


def features(toks: torch.Tensor) -> FeatureSet:
    return default_features(
        VOCAB,
        toks,
        bos_token_id=BOS,
        n_unigrams=20,
        position_bins=8,
        # the parser's labels, precomputed for the stream and aligned with it
        user=[UserFeature("dep:nsubj", parser_label(toks).numpy(), family="syntax")],
    )


def kw(**extra):
    return dict(vocab=VOCAB, bos_token_id=BOS, progress=False, **extra)


def test_planted_neurons_get_their_families(model):
    toks = stream()
    table = explain(model, toks, [(0, i) for i in range(D_MLP)], features=features(toks), **kw())
    assert table.groupby("neuron").size().drop(DEAD).eq(5).all()  # top 5 per neuron
    best = table[table["rank"] == 1].set_index("neuron")
    assert best.loc[UNIGRAM_THE, "feature"] == "token:'the'"
    assert best.loc[UNIGRAM_THE, "variance_reduction"] == pytest.approx(1.0, abs=1e-12)
    assert best.loc[PREV_CAT, "feature"] == "prev_token:'cat'"
    assert best.loc[PREV_CAT, "variance_reduction"] == pytest.approx(1.0, abs=1e-12)
    assert best.loc[FIRST_A, "feature"] == "token_set:first_letter_a"
    assert best.loc[POSITION, "family"] == "position"
    assert best.loc[POSITION, "feature"].startswith("position:>=")
    assert best.loc[PARSER, "feature"] == "dep:nsubj"
    assert np.isnan(best.loc[DEAD, "variance_reduction"]) and pd.isna(best.loc[DEAD, "feature"])
    # mean_in / mean_out say which side the neuron fires on
    assert best.loc[PREV_CAT, "mean_in"] == pytest.approx(1.5)
    assert best.loc[PREV_CAT, "mean_out"] == pytest.approx(-0.5)

    labels = families(table).set_index("neuron")
    assert labels.loc[UNIGRAM_THE, "family"] == "unigram"
    assert labels.loc[PREV_CAT, "family"] == "previous-token"
    assert labels.loc[POSITION, "family"] == "position"
    assert labels.loc[FIRST_A, "family"] == "alphabet"
    assert labels.loc[PARSER, "family"] == "syntax"
    assert labels.loc[RANDOM, "family"] == "none"
    assert labels.loc[RANDOM, "variance_reduction"] < 0.05
    assert labels.loc[DEAD, "family"] == "none"

    counts = family_counts(families(table))
    assert (
        counts.loc[0, ["unigram", "alphabet", "previous-token", "position", "syntax"]].eq(1).all()
    )
    assert counts.loc[0, "total"] == D_MLP
    assert (
        counts.loc[0, "none"]
        == D_MLP
        - 5
        - counts.loc[0]
        .drop(["unigram", "alphabet", "previous-token", "position", "syntax", "none", "total"])
        .sum()
    )


def test_matches_pandas_groupby_oracle(model):
    """VR = (Var(a) - [p_F Var(a|not F) + p_T Var(a|F)]) / Var(a) with pandas, float64."""
    toks = stream(seed=1)
    fs = features(toks)
    neurons = [(0, i) for i in range(D_MLP) if i != DEAD] + [(1, 0), (1, 7)]
    stats = variance_reduction(model, toks, neurons, features=fs, batch_size=5, **kw())
    _, cache = model.run_with_cache(toks)
    keep = toks != BOS
    acts = pd.DataFrame(
        {
            (layer, n): cache[f"blocks.{layer}.mlp.hook_post"][..., n][keep].double().numpy()
            for layer, n in neurons
        }
    )
    table = fs.table(FeatureContext.from_tokens(toks, keep, vocab=VOCAB))
    vr = stats.variance_reduction()
    total = acts.var(ddof=0)
    for f, name in enumerate(fs.names):
        groups = acts.groupby(table[name].to_numpy())
        if groups.ngroups < 2:
            expected = np.zeros(len(neurons))
        else:
            var, p = groups.var(ddof=0), groups.size() / len(acts)
            expected = (
                (total - (p[False] * var.loc[False] + p[True] * var.loc[True])) / total
            ).to_numpy()
        np.testing.assert_allclose(vr[f], expected, rtol=0, atol=1e-9, err_msg=name)
    # mean_in/mean_out and feature counts
    mean_in, mean_out = stats.feature_means()
    f = fs.names.index("token:'the'")
    col = table["token:'the'"].to_numpy()
    np.testing.assert_allclose(mean_in[f], acts[col].mean().to_numpy(), atol=1e-12)
    np.testing.assert_allclose(mean_out[f], acts[~col].mean().to_numpy(), atol=1e-12)
    assert stats.feature_counts().tolist() == table.sum().tolist()
    np.testing.assert_allclose(stats.variance(), total.to_numpy(), rtol=1e-12)


def test_position_mutual_information_oracle(model):
    toks = stream(seed=2)
    fs = features(toks)
    neurons = [(0, RANDOM), (0, PARSER), (1, 3), (1, 4)]
    stats = variance_reduction(model, toks, neurons, features=fs, batch_size=7, **kw())
    acts = collect_activations(model, toks, bos_token_id=BOS, progress=False)[0]
    positions = FeatureContext.from_tokens(toks, bos_token_id=BOS).positions.numpy()
    bins = np.searchsorted(np.asarray(fs.position_group.starts), positions, side="right") - 1
    for j, (layer, n) in enumerate(neurons):
        fires = acts[:, layer * D_MLP + n].numpy() > 0
        joint = pd.crosstab(bins, fires).to_numpy() / len(fires)
        outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
        nz = joint > 0
        expected = (joint[nz] * np.log2(joint[nz] / outer[nz])).sum()
        assert stats.position_mutual_information()[j] == pytest.approx(expected, abs=1e-12)


def test_many_batches_equal_one(model):
    toks = stream(seed=3)
    fs = features(toks)
    one = variance_reduction(model, toks, None, features=fs, batch_size=len(toks), **kw())
    many = variance_reduction(model, toks, None, features=fs, batch_size=1, **kw())
    np.testing.assert_allclose(many.variance_reduction(), one.variance_reduction(), atol=1e-10)
    np.testing.assert_allclose(
        many.position_mutual_information(), one.position_mutual_information(), atol=1e-12
    )
    pd.testing.assert_frame_equal(many.top_features(3), one.top_features(3), atol=1e-10)


def test_shift_keeps_precision_for_large_means():
    """A neuron at 1e6 ± 1: unshifted float64 sums would lose ~1e-4 of the variance."""
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(1, 5, (40, 50), generator=g)
    toks[:, 0] = BOS
    keep = toks != BOS
    flag = (toks[keep] == 1).double()
    acts = (1e6 + flag + 0.5 * torch.randn(flag.shape, generator=g, dtype=torch.float64))[:, None]
    fs = FeatureSet([UserFeature("is1", (toks == 1).numpy())])
    batches = [
        ActivationBatch(
            [acts[int(keep[:lo].sum()) : int(keep[:hi].sum())]], toks[lo:hi], keep[lo:hi], lo
        )
        for lo, hi in [(0, 13), (13, 27), (27, 40)]
    ]
    stats = variance_reduction_stream(batches, fs)
    a, x = acts[:, 0].numpy(), flag.numpy().astype(bool)
    total = a.var()
    expected = (total - (x.mean() * a[x].var() + (1 - x.mean()) * a[~x].var())) / total
    assert stats.variance_reduction()[0, 0] == pytest.approx(expected, abs=1e-10)


def test_accessor_and_neuron_selection(model):
    toks = stream(n=8)
    universal = pd.DataFrame(
        {"layer": [1, 0], "neuron": [3, UNIGRAM_THE], "excess_corr": [0.6, 0.7]}
    )
    table = model.universality.explain(toks, universal, features=features(toks), top_k=2, **kw())
    assert table[["layer", "neuron"]].drop_duplicates().values.tolist() == [
        [0, UNIGRAM_THE],
        [1, 3],
    ]
    labels = model.universality.families(toks, universal, features=features(toks), **kw())
    assert labels.set_index("neuron").loc[UNIGRAM_THE, "family"] == "unigram"
    # default features of the model itself (vocab given as strings: the model has no tokenizer)
    default = explain(model, toks, [(0, UNIGRAM_THE)], n_unigrams=10, top_k=1, **kw())
    assert default["feature"].tolist() == ["token:'the'"]


def test_bad_inputs(model):
    with pytest.raises(IndexError, match="do not exist"):
        neuron_frame(model, [(2, 0)])
    with pytest.raises(ValueError, match="lacks column"):
        neuron_frame(model, pd.DataFrame({"layer": [0]}))
    with pytest.raises(ValueError, match="No neurons"):
        neuron_frame(model, [])
    with pytest.raises(TypeError, match="takes only"):
        families(pd.DataFrame(), stream())
    with pytest.raises(EmptyTokenSourceError):
        variance_reduction_stream([], FeatureSet([PositionFeatures([0])]))
    with pytest.raises(ValueError, match="vocab="):
        explain(model, stream(n=2), [(0, 0)], bos_token_id=BOS, progress=False)
    with pytest.raises(KeyError, match="No family"):
        label_families(
            pd.DataFrame(
                {
                    "layer": [0],
                    "neuron": [0],
                    "feature": ["f"],
                    "family": ["nope"],
                    "variance_reduction": [0.9],
                }
            )  # fmt: skip
        )


def test_threshold_overrides_and_alphabet_threshold():
    expl = pd.DataFrame(
        {
            "layer": 0,
            "neuron": [0, 1, 2],
            "feature": ["token_set:first_letter_b", "token:'x'", "position:>=8"],
            "family": ["alphabet", "unigram", "position"],
            "variance_reduction": [0.4, 0.45, 0.55],
        }
    )
    assert label_families(expl)["family"].tolist() == ["alphabet", "none", "position"]
    custom = label_families(expl, {"unigram": 0.4, "position": 0.6})
    assert custom["family"].tolist() == ["alphabet", "unigram", "none"]


def test_top_activations_and_html(model, tmp_path):
    toks = stream(n=12)
    top = top_activations(model, toks, 0, POSITION, k=5, context=4, after=1, batch_size=5, **kw())
    acts = collect_activations(model, toks, bos_token_id=BOS, progress=False)[0][:, POSITION]
    frame = top.to_dataframe()
    np.testing.assert_allclose(frame["activation"], acts.double().topk(5).values.numpy(), atol=1e-6)
    assert frame["position"].eq(N_CTX - 1).all()  # the position neuron peaks at the end
    assert frame["sequence"].tolist() == [0, 1, 2, 3, 4]  # ties: stream order
    first = top.examples[0]
    assert first.tokens[first.center] == VOCAB[int(toks[0, N_CTX - 1])]
    assert len(first.tokens) == 5 and frame["right"][0] == ""

    # the script tag in the vocabulary must come out escaped, and the activating token outlined
    script = VOCAB.index("<script>alert(1)</script>")
    toks[:, 5] = script
    top = top_activations(model, toks, 0, POSITION, k=3, context=30, **kw())
    page = top.to_html()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count('class="tok top"') == 3
    path = top.save_html(tmp_path / "neuron.html")
    assert path.read_text(encoding="utf-8") == page


def test_stats_validate_shapes():
    toks = stream(n=2)
    fs = FeatureSet([PositionFeatures([0, 8])])
    stats = VarianceReductionStats(fs, 3)
    with pytest.raises(EmptyTokenSourceError):
        stats.variance_reduction()
    with pytest.raises(ValueError, match="kept tokens"):
        stats.update(torch.zeros(5, 3), FeatureContext.from_tokens(toks, bos_token_id=BOS))
