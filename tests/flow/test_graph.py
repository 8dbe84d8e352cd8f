"""flow_graph against independent oracles computed here from run_with_cache and the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import build_model
from tl_universality.flow.graph import flow_graph, head_outputs, neuron_values, query_directions
from tl_universality.flow.readout import vector_logits

PROMPT = [0, 5, 17, 3, 42, 9, 11, 30]


@pytest.fixture(scope="module")
def model():
    return build_model().eval()


@pytest.fixture(scope="module")
def cache(model):
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.tensor([PROMPT]))
    return logits, cache


def test_heads_sum_to_the_attention_output(model, cache):
    _, cache = cache
    for layer in range(model.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"][0]  # [pos, heads, d_head]
        W_O = model.blocks[layer].attn.W_O  # [heads, d_head, d_model]
        manual = (
            sum(z[:, h] @ W_O[h] for h in range(model.cfg.n_heads)) + model.blocks[layer].attn.b_O
        )
        torch.testing.assert_close(manual, cache[f"blocks.{layer}.hook_attn_out"][0])
        for p in (0, 4, 7):
            ours = head_outputs(model, layer, z[p])
            torch.testing.assert_close(ours.sum(0) + model.b_O[layer], manual[p])


def test_neurons_sum_to_the_mlp_output(model, cache):
    _, cache = cache
    for layer in range(model.cfg.n_layers):
        acts = cache[f"blocks.{layer}.mlp.hook_post"][0]
        W_out = model.blocks[layer].mlp.W_out
        manual = acts @ W_out + model.blocks[layer].mlp.b_out
        torch.testing.assert_close(manual, cache[f"blocks.{layer}.hook_mlp_out"][0])
        ours = neuron_values(model, layer, acts[3])
        torch.testing.assert_close(ours.sum(0) + model.b_out[layer], manual[3])


def test_residual_identities_and_complete_graph_decomposition(model, cache):
    _, cache = cache
    for layer in range(model.cfg.n_layers):
        b = f"blocks.{layer}"
        torch.testing.assert_close(
            cache[f"{b}.hook_resid_mid"], cache[f"{b}.hook_resid_pre"] + cache[f"{b}.hook_attn_out"]
        )
        torch.testing.assert_close(
            cache[f"{b}.hook_resid_post"], cache[f"{b}.hook_resid_mid"] + cache[f"{b}.hook_mlp_out"]
        )
    graph = flow_graph(model, PROMPT, heads=2, neurons=(3, 2))
    nodes = graph.nodes.set_index("id")
    edges = graph.edges
    # Every sum node's incoming shares add up to 1: nothing is lost to pruning (rest nodes).
    sums = edges[edges["kind"].isin(["skip", "write", "head", "neuron"])].groupby("target")
    totals = sums["share"].sum()
    assert len(totals) == 4 * model.cfg.n_layers
    np.testing.assert_allclose(totals.to_numpy(), 1.0, atol=1e-4)
    # Node norms are the cache's.
    for layer in range(model.cfg.n_layers):
        for kind, hook in (("resid_mid", "hook_resid_mid"), ("resid_post", "hook_resid_post"),
                           ("attn_out", "hook_attn_out"), ("mlp_out", "hook_mlp_out")):  # fmt: skip
            want = float(cache[f"blocks.{layer}.{hook}"][0, -1].norm())
            assert nodes.loc[f"L{layer}.{kind}", "norm"] == pytest.approx(want, rel=1e-5)


def _vector(model, cache, graph, node):
    """Recompute a node's vector independently of the graph code."""
    p, layer, kind = int(node.position), int(node.layer), node.kind
    b = f"blocks.{layer}"
    hooks = {
        "resid_pre": "hook_resid_pre",
        "source": "hook_resid_pre",
        "resid_mid": "hook_resid_mid",
        "resid_post": "hook_resid_post",
        "attn_out": "hook_attn_out",
        "mlp_out": "hook_mlp_out",
    }
    if kind in hooks:
        return cache[f"{b}.{hooks[kind]}"][0, p]
    if kind == "head":
        return cache[f"{b}.attn.hook_z"][0, p, node.unit] @ model.blocks[layer].attn.W_O[node.unit]
    if kind == "neuron":
        return (
            cache[f"{b}.mlp.hook_post"][0, p, node.unit] * model.blocks[layer].mlp.W_out[node.unit]
        )
    if kind == "bias":
        block = model.blocks[layer]
        return block.attn.b_O if node.id.endswith("attn_bias") else block.mlp.b_out
    assert kind == "rest"
    with_bias = not graph.meta["include_biases"]
    kept = graph.nodes[(graph.nodes["layer"] == layer)]
    if node.id.endswith("attn_rest"):
        heads = kept[kept["kind"] == "head"]["unit"]
        z = cache[f"{b}.attn.hook_z"][0, p]
        W_O = model.blocks[layer].attn.W_O
        rest = cache[f"{b}.hook_attn_out"][0, p] - sum(z[h] @ W_O[h] for h in heads)
        return rest if with_bias else rest - model.blocks[layer].attn.b_O
    neurons = kept[kept["kind"] == "neuron"]["unit"]
    acts = cache[f"{b}.mlp.hook_post"][0, p]
    W_out = model.blocks[layer].mlp.W_out
    rest = cache[f"{b}.hook_mlp_out"][0, p] - sum(acts[n] * W_out[n] for n in neurons)
    return rest if with_bias else rest - model.blocks[layer].mlp.b_out


@pytest.mark.parametrize("position,biases", [(-1, False), (3, False), (6, True)])
def test_every_top_token_is_the_argmax_of_the_logit_lens(model, cache, position, biases):
    _, cache = cache
    graph = flow_graph(model, PROMPT, position=position, heads=3, neurons=(4, 2), top_k=3,
                       include_biases=biases)  # fmt: skip
    kinds = set(graph.nodes["kind"])
    assert {"resid_pre", "head", "neuron", "source", "rest", "attn_out", "mlp_out"} <= kinds
    assert ("bias" in kinds) == biases
    with torch.no_grad():
        for node in graph.nodes.itertuples():
            v = _vector(model, cache, graph, node)
            logits = model.ln_final(v[None])[0] @ model.W_U + model.b_U
            # (a zero bias at init reads as all-equal logits: any of the tied tokens is the top)
            tied = (logits == logits.max()).nonzero()[:, 0].tolist()
            assert node.top_ids[0] in tied, node.id
            assert node.norm == pytest.approx(float(v.norm()), rel=1e-4, abs=1e-6)
            probs = logits.softmax(-1)
            assert node.target_prob == pytest.approx(float(probs[graph.meta["target"]]), rel=1e-4)


def test_readings_add_linearly_without_layernorm():
    model = build_model(normalization_type=None).eval()
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([PROMPT]))
        b_U = model.b_U
        for layer in range(model.cfg.n_layers):
            pre, attn = (
                cache[f"blocks.{layer}.hook_resid_pre"][0],
                cache[f"blocks.{layer}.hook_attn_out"][0],
            )
            mid = cache[f"blocks.{layer}.hook_resid_mid"][0]
            for mode in ("own", "residual"):
                whole = vector_logits(model, mid, mode=mode)
                parts = vector_logits(model, pre, mode=mode) + vector_logits(model, attn, mode=mode)
                torch.testing.assert_close(whole, parts - b_U, atol=1e-5, rtol=1e-5)
        # ...and the final reading is the model's output.
        final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][0]
        torch.testing.assert_close(vector_logits(model, final), model(torch.tensor([PROMPT]))[0])


def test_residual_scale_reading_is_affine_and_exact_on_the_residual(model, cache):
    logits, cache = cache
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][0]
    scale = cache["ln_final.hook_scale"][0]
    torch.testing.assert_close(vector_logits(model, final, mode="residual", scale=scale), logits[0])
    a, b = torch.randn(2, len(PROMPT), model.cfg.d_model)
    zero = vector_logits(model, torch.zeros_like(a), mode="residual", scale=scale)
    together = vector_logits(model, a + b, mode="residual", scale=scale)
    apart = vector_logits(model, a, mode="residual", scale=scale) + vector_logits(
        model, b, mode="residual", scale=scale
    )
    torch.testing.assert_close(together, apart - zero, atol=1e-4, rtol=1e-4)
    graph = flow_graph(model, PROMPT, reading="residual")
    final_node = graph.nodes.set_index("id").loc[f"L{model.cfg.n_layers - 1}.resid_post"]
    assert final_node["top_ids"][0] == int(logits[0, -1].argmax())


def test_query_directions_reproduce_the_attention_scores(model, cache):
    _, cache = cache
    graph = flow_graph(model, PROMPT, position=5, heads=4, sources=7)
    for layer in range(model.cfg.n_layers):
        b = f"blocks.{layer}"
        attn = model.blocks[layer].attn
        key_input = model.blocks[layer].ln1(cache[f"{b}.hook_resid_pre"][0])  # [pos, d_model]
        scores = cache[f"{b}.attn.hook_attn_scores"][0]  # [heads, q, k]
        for p in (2, 5, 7):
            q = cache[f"{b}.attn.hook_q"][0, p]  # [heads, d_head]
            r = query_directions(model, layer, q)
            mine = (r @ key_input[: p + 1].T + (q * attn.b_K).sum(-1)[:, None]) / attn.attn_scale
            torch.testing.assert_close(mine, scores[:, p, : p + 1], atol=1e-5, rtol=1e-5)
        # The value edges carry the scores and patterns of the position read.
        value = graph.edges[(graph.edges["kind"] == "value") & (graph.edges["layer"] == layer)]
        pattern = cache[f"{b}.attn.hook_pattern"][0]
        for e in value.itertuples():
            h = int(graph.nodes.set_index("id").loc[e.target, "unit"])
            s = int(graph.nodes.set_index("id").loc[e.source, "position"])
            assert e.score == pytest.approx(float(scores[h, 5, s]), rel=1e-5, abs=1e-6)
            assert e.attention == pytest.approx(float(pattern[h, 5, s]), rel=1e-5, abs=1e-7)
        # Value contributions of all sources add up to each head's output.
        shares = value.groupby("target")["share"].sum()
        np.testing.assert_allclose(shares.to_numpy(), 1.0, atol=1e-4)


def test_non_last_position_reads_that_position(model, cache):
    logits, _ = cache
    graph = flow_graph(model, PROMPT, position=2)
    assert graph.meta["position"] == 2 and graph.meta["target"] == PROMPT[3]
    assert graph.meta["target_source"] == "next token"
    main = graph.nodes[graph.nodes["kind"] != "source"]
    assert (main["position"] == 2).all()
    assert graph.nodes.loc[graph.nodes["kind"] == "source", "position"].lt(2).all()
    final = graph.nodes.set_index("id").loc["L1.resid_post"]
    rank = int((logits[0, 2] > logits[0, 2, PROMPT[3]]).sum()) + 1
    assert final["target_rank"] == rank
    assert flow_graph(model, PROMPT, position=0).summary()["n_sources"] == 0


def test_layers_subset_and_biases(model):
    graph = flow_graph(model, PROMPT, layers=[1], include_biases=True, heads=4)
    assert set(graph.nodes["layer"]) == {1}
    assert "L1.resid_pre" in set(graph.nodes["id"])
    assert {"L1.attn_bias", "L1.mlp_bias"} <= set(graph.nodes["id"])
    assert "L1.attn_rest" not in set(graph.nodes["id"])  # all heads kept, bias drawn
    into = graph.edges.groupby("target")["share"].sum()
    assert into["L1.attn_out"] == pytest.approx(1.0, abs=1e-4)


def test_universality_overlay_marks_neurons(model):
    import pandas as pd

    graph = flow_graph(model, PROMPT, neurons=(3, 0))
    kept = graph.nodes[graph.nodes["kind"] == "neuron"].iloc[0]
    table = pd.DataFrame({"layer": [kept.layer], "neuron": [kept.unit], "excess_corr": [0.7]})
    families = pd.DataFrame({"layer": [kept.layer], "neuron": [kept.unit], "family": ["unigram"]})
    marked = flow_graph(model, PROMPT, neurons=(3, 0), correlation=table, families=families)
    row = marked.nodes.set_index("id").loc[kept.id]
    assert row["is_universal"] and row["excess_corr"] == 0.7 and row["family"] == "unigram"
    assert marked.summary()["n_universal"] == 1


def test_accessor_matches_the_free_function(model):
    import tl_universality  # noqa: F401  (registers the accessor)

    a = model.universality.flow_graph(PROMPT, position=4)
    b = flow_graph(model, PROMPT, position=4)
    assert a.nodes["id"].tolist() == b.nodes["id"].tolist()


@pytest.mark.parametrize(
    "overrides",
    [
        dict(attn_only=True),
        dict(n_key_value_heads=2),
        dict(positional_embedding_type="rotary", rotary_dim=8),
        dict(normalization_type="RMS"),
    ],
    ids=["attn-only", "grouped-query", "rotary", "rms"],
)
def test_other_architectures_decompose_completely(overrides):
    model = build_model(**overrides).eval()
    graph = flow_graph(model, PROMPT, heads=2, neurons=(3, 1))
    into = graph.edges[graph.edges["kind"].isin(["skip", "write", "head", "neuron"])]
    np.testing.assert_allclose(into.groupby("target")["share"].sum(), 1.0, atol=1e-4)
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.tensor([PROMPT]))
    final = graph.nodes.set_index("id").loc[f"L{model.cfg.n_layers - 1}.resid_post"]
    assert final["top_ids"][0] == int(logits[0, -1].argmax())
    assert final["norm"] == pytest.approx(float(cache["blocks.1.hook_resid_post"][0, -1].norm()))
    heads = graph.nodes[graph.nodes["kind"] == "head"]
    rotary = overrides.get("positional_embedding_type") == "rotary"
    assert all((len(q) == 0) == rotary for q in heads["query_tokens"])
    if overrides.get("attn_only"):
        assert not graph.nodes["kind"].isin(["resid_mid", "neuron", "mlp_out"]).any()


def test_transformer_bridge():
    from transformer_lens.model_bridge import TransformerBridge

    cfg = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64, d_vocab=50,
               act_fn="gelu_new", normalization_type="LN")  # fmt: skip
    model = TransformerBridge.boot_native(cfg)
    graph = flow_graph(model, [0, 3, 5, 7], heads=2, neurons=(3, 1))
    into = graph.edges[graph.edges["kind"].isin(["skip", "write", "head", "neuron"])]
    np.testing.assert_allclose(into.groupby("target")["share"].sum(), 1.0, atol=1e-4)
    with torch.no_grad():
        logits = model(torch.tensor([[0, 3, 5, 7]]))
    assert graph.nodes.set_index("id").loc["L1.resid_post", "top_ids"][0] == int(
        logits[0, -1].argmax()
    )
