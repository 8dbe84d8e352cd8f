"""Pruning keeps exactly the budget, and says what it pruned."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import build_model
from tl_universality.flow.graph import flow_graph
from tl_universality.flow.prune import Budget, keep_strongest, keep_top_bottom

PROMPT = [0, 5, 17, 3, 42, 9]


@pytest.fixture(scope="module")
def model():
    return build_model(n_heads=4, d_mlp=64).eval()


@pytest.mark.parametrize("heads,neurons", [(0, (0, 0)), (1, (5, 2)), (3, (18, 7)), (4, (60, 10))])
def test_count_budgets_keep_exactly_that_many(model, heads, neurons):
    graph = flow_graph(model, PROMPT, heads=heads, neurons=neurons)
    n_heads, d_mlp = model.cfg.n_heads, model.cfg.d_mlp
    kept_neurons = min(sum(neurons), d_mlp)
    for layer in range(model.cfg.n_layers):
        at = graph.nodes[graph.nodes["layer"] == layer]
        assert (at["kind"] == "head").sum() == min(heads, n_heads)
        assert (at["kind"] == "neuron").sum() == kept_neurons
        assert (at["side"] == "top").sum() == min(neurons[0], d_mlp)
        pruned = graph.pruned[graph.pruned["layer"] == layer]
        assert (pruned["kind"] == "head").sum() == n_heads - min(heads, n_heads)
        assert (pruned["kind"] == "neuron").sum() == d_mlp - kept_neurons
        drawn = set(at.loc[at["kind"].isin(["head", "neuron"]), "id"])
        assert drawn.isdisjoint(set(pruned["name"]))
        ids = at.set_index("id")
        if kept_neurons < d_mlp:  # the pruned neurons and the bias, summed into one node
            assert ids.loc[f"L{layer}.mlp_rest", "n_units"] == d_mlp - kept_neurons
            assert f"L{layer}.mlp_bias" not in ids.index
        else:  # nothing pruned: only the bias is left
            assert f"L{layer}.mlp_rest" not in ids.index and f"L{layer}.mlp_bias" in ids.index


def test_top_and_bottom_neurons_are_the_extremes(model):
    graph = flow_graph(model, PROMPT, neurons=(4, 3))
    for layer in range(model.cfg.n_layers):
        at = graph.nodes[(graph.nodes["layer"] == layer) & (graph.nodes["kind"] == "neuron")]
        pruned = graph.pruned[(graph.pruned["layer"] == layer) & (graph.pruned["kind"] == "neuron")]
        top = at[at["side"] == "top"]["score"]
        bottom = at[at["side"] == "bottom"]["score"]
        assert top.min() >= pruned["score"].max() >= pruned["score"].min() >= bottom.max()


@pytest.mark.parametrize("share", [0.3, 0.75, 1.0])
def test_share_budgets_keep_the_fewest_reaching_the_share(share):
    norms = torch.tensor([0.1, 2.0, 0.7, 0.0, 1.2, 0.5])
    kept = keep_strongest(norms, share)
    total = float(norms.sum())
    assert float(norms[kept].sum()) >= share * total * (1 - 1e-9)
    assert float(norms[kept[:-1]].sum()) < share * total  # one fewer would not reach it
    assert 3 not in kept.tolist()  # a zero-norm unit is never needed
    top, bottom = keep_top_bottom(torch.tensor([0.5, -2.0, 1.0, -0.1]), share)
    assert (torch.tensor([0.5, -2.0, 1.0, -0.1])[top] >= 0).all()


def test_share_budget_in_a_graph(model):
    graph = flow_graph(model, PROMPT, heads=0.5, neurons=0.5)
    for layer in range(model.cfg.n_layers):
        heads = graph.nodes[(graph.nodes["layer"] == layer) & (graph.nodes["kind"] == "head")]
        pruned = graph.pruned[(graph.pruned["layer"] == layer) & (graph.pruned["kind"] == "head")]
        total = heads["score"].sum() + pruned["score"].sum()
        assert heads["score"].sum() >= 0.5 * total
        assert heads["score"].sum() - heads["score"].min() < 0.5 * total
    assert graph.meta["budget"] == {"heads": 0.5, "neurons": 0.5}


@pytest.mark.parametrize(
    "kwargs,named",
    [
        (dict(heads=-1), "heads=-1"),
        (dict(heads=1.5), "heads=1.5"),
        (dict(heads=True), "heads=True"),
        (dict(neurons=(3, -1)), "neurons=(3, -1)"),
        (dict(neurons=0.0), "neurons=0.0"),
    ],
)
def test_bad_budgets_name_the_argument_value_and_fix(kwargs, named):
    with pytest.raises(ValueError) as err:
        Budget(**kwargs)
    assert named in str(err.value) and "Pass" in str(err.value)
