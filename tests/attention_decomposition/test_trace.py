"""Writers sum to the residual's projection; the planted channel is recovered; graphs are stable."""

from __future__ import annotations

import networkx as nx
import pandas as pd
import pytest
import torch

from tests.attention_decomposition.conftest import randomise_biases
from tests.helpers import build_model
from tl_universality.attention_decomposition.decompose import augmented_residual
from tl_universality.attention_decomposition.planted import planted_circuit
from tl_universality.attention_decomposition.svd import attention_svd
from tl_universality.attention_decomposition.trace import CircuitTrace, trace_circuit
from tl_universality.attention_decomposition.writers import (
    writer_hooks,
    writer_projections,
    writer_set,
)
from tl_universality.units.hooks import run_with_interventions


@pytest.mark.parametrize("normalization", ["LN", "LNPre", None])
@pytest.mark.parametrize("neurons", [None, [(0, 3), (1, 60), (1, 7)]])
def test_writers_sum_to_the_projection_of_the_whole_residual(normalization, neurons, tokens):
    model = randomise_biases(build_model(n_layers=3, normalization_type=normalization), seed=3)
    layer = 2
    names = writer_hooks(model, layer, neurons) + [f"blocks.{layer}.hook_resid_pre"]
    if normalization:
        names.append(f"blocks.{layer}.ln1.hook_scale")
    _, cache = run_with_interventions(model, tokens, capture=names, stop_at_layer=layer + 1)
    writers = writer_set(model, layer, neurons)
    assert len(writers) == 2 + 2 * 4 + 2 + len(neurons or []) + 1
    x_aug, scale = augmented_residual(model, cache, layer)
    prompt, position = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 11, 4, 7])
    svd = attention_svd(model, layer, 1)
    for directions in (svd.U, svd.V, torch.randn(33, 5, dtype=torch.float64)):
        parts = writer_projections(
            model, cache, writers, prompt, position, directions, scale, svd.centred
        )
        torch.testing.assert_close(
            parts.sum(1), x_aug[prompt, position] @ directions, atol=1e-5, rtol=1e-5
        )


def test_planted_communication_is_recovered_exactly():
    model, tokens = planted_circuit()
    trace = trace_circuit(model, tokens, ["L1H0"])
    assert trace.head_edges() == {("L0H0", "L1H0")}
    assert len(trace.firings) == 4 and (trace.firings["attention"] > 0.9).all()
    # the query side comes from A, the key side from the marker's embedding, nothing else
    sides = set(zip(trace.contributions["source"], trace.contributions["side"], strict=True))
    assert sides == {("L0H0", "query"), ("embed", "key")}
    assert (trace.firings["n_selected"] == 1).all()  # a rank-one channel: one direction
    # the control: B reading the other head's direction moves the edge with it
    model, tokens = planted_circuit(sender=1)
    assert trace_circuit(model, tokens, [(1, 0)]).head_edges() == {("L0H1", "L1H0")}


def test_recursion_depth_and_shares(biased_model, tokens):
    trace = trace_circuit(biased_model, tokens, ["L2H0", "L2H3"], dest=None, min_attention=0.3)
    f, c = trace.firings, trace.contributions
    assert len(f) > 0 and set(f["depth"]) <= {0, 1, 2}
    assert (f.loc[f["depth"] == 0, "layer"] == 2).all()
    # every traced head below the roots was an edge of a firing above it
    upstream = set(f.loc[f["depth"] > 0, "node"])
    assert upstream <= set(c["source"])
    # the kept writers of each (firing, side) reach the edge share of its signal
    reached = c.groupby(["firing", "side"])["share"].sum()
    assert (reached >= 0.7 - 1e-9).all()
    shallow = trace_circuit(biased_model, tokens, ["L2H0", "L2H3"], dest=None, min_attention=0.3,
                            max_depth=0)  # fmt: skip
    assert set(shallow.firings["depth"]) == {0}


def test_neurons_are_traced_as_writers(biased_model, tokens):
    from tl_universality.analyses.attention import attention_deactivation_scores

    top = attention_deactivation_scores(biased_model, bos_token_id=0).top(5)
    trace = trace_circuit(biased_model, tokens, ["L2H1"], dest=None, min_attention=0.2,
                          neurons=top)  # fmt: skip
    assert trace.settings["neurons"] == sorted(
        [list(p) for p in set(zip(top["layer"].tolist(), top["neuron"].tolist(), strict=True))]
    )
    # splitting neurons out of their MLP re-attributes the signal, never changes it
    plain = trace_circuit(biased_model, tokens, ["L2H1"], dest=None, min_attention=0.2)
    pd.testing.assert_frame_equal(
        trace.firings.drop(columns=["depth"])
        .iloc[: len(plain.firings)]
        .reset_index(drop=True)[["prompt", "dest", "src", "signal_query", "signal_key"]]
        .head(3),
        plain.firings[["prompt", "dest", "src", "signal_query", "signal_key"]].head(3),
    )
    writers = set(trace.contributions["source"])
    assert writers - set(plain.contributions["source"]) <= {
        f"L{a}N{b}" for a, b in zip(top["layer"], top["neuron"], strict=True)
    }


def test_graph_is_deterministic_and_survives_graphml_and_save(tmp_path, biased_model, tokens):
    kwargs = dict(dest=None, min_attention=0.3)
    one = trace_circuit(biased_model, tokens, ["L2H0"], **kwargs)
    two = trace_circuit(biased_model, tokens, ["L2H0"], **kwargs)
    for name in ("nodes", "edges", "firings", "contributions"):
        pd.testing.assert_frame_equal(getattr(one, name), getattr(two, name))
    graph = one.to_networkx()
    assert graph.number_of_nodes() == len(one.nodes) and graph.number_of_edges() == len(one.edges)
    path = one.to_graphml(tmp_path / "trace.graphml")
    back = nx.read_graphml(path)
    assert sorted(back.nodes(data=True)) == sorted(graph.nodes(data=True))
    assert sorted(back.edges(data=True)) == sorted(graph.edges(data=True))
    loaded = CircuitTrace.load(one.save(tmp_path / "saved"))
    pd.testing.assert_frame_equal(loaded.edges, one.edges)
    pd.testing.assert_frame_equal(loaded.firings, one.firings)
    assert loaded.summary() == one.summary()
    assert one.plot().axes


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(roots=["L7H0"]), "layer=7 .* 0 <= layer < 3"),
        (dict(roots=["L1N3"]), "a neuron: roots are heads"),
        (dict(roots=["nonsense"]), "not a unit name"),
        (dict(roots=[]), "roots is empty"),
        (dict(roots=["L1H0"], edge_share=0.0), r"edge_share=0.0 must be in \(0, 1\]"),
        (dict(roots=["L1H0"], min_attention=2.0), "min_attention=2.0"),
        (dict(roots=["L1H0"], neurons=[(0, 500)]), r"neurons holds \(0, 500\)"),
        (dict(roots=["L1H0"], neurons=pd.DataFrame({"x": [1]})), "'layer' and 'neuron'"),
    ],
)
def test_bad_trace_inputs(biased_model, tokens, kwargs, match):
    with pytest.raises(ValueError, match=match):
        trace_circuit(biased_model, tokens, **kwargs)
