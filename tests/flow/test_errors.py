"""Bad inputs: errors that name the argument, the value and the fix."""

from __future__ import annotations

import inspect

import pytest
import torch

from tests.helpers import build_model, byte_level_tokenizer, saved
from tl_universality.flow.graph import flow_graph
from tl_universality.flow.prune import Budget

PROMPT = [0, 5, 17, 3]


@pytest.fixture(scope="module")
def model():
    return build_model().eval()


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    tokens = ["<|endoftext|>", "a", "b", "c", " ", "Ġa", "Ġb"]
    tokenizer = saved(byte_level_tokenizer(tokens), tmp_path_factory.mktemp("tok"))
    return build_model(tokenizer=tokenizer).eval()


@pytest.mark.parametrize(
    "kwargs,fragments",
    [
        (dict(position=4), ["position=4", "out of range", "4 tokens", "[-4, 4)"]),
        (dict(position=-5), ["position=-5", "[-4, 4)"]),
        (dict(target=64), ["target=64", "d_vocab=64", "Pass an id"]),
        (dict(layers=[0, 2]), ["layers=[0, 2]", "layer 2", "n_layers=2"]),
        (dict(layers=[]), ["layers=[]", "Pass None"]),
        (dict(heads=-2), ["heads=-2", "Pass a count"]),
        (dict(neurons=(3, -1)), ["neurons=(3, -1)", "(top, bottom)"]),
        (dict(top_k=0), ["top_k=0", "positive"]),
    ],
)
def test_bad_arguments(model, kwargs, fragments):
    with pytest.raises(ValueError) as err:
        flow_graph(model, PROMPT, **kwargs)
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize(
    "kwargs,fragments",
    [
        (dict(position=1.0), ["position=1.0", "not an integer"]),
        (dict(target=[1]), ["target=[1]", "Pass an int id"]),
        (dict(neurons="many"), ["neurons='many'", "(top, bottom)"]),
        (dict(heads="all"), ["heads='all'", "Pass a count"]),
        (dict(reading="lens"), ["reading='lens'", "reading='own'"]),
    ],
)
def test_arguments_of_the_wrong_type(model, kwargs, fragments):
    """Under the test suite's beartype checks these fail as TypeError; without them (as users
    run it) our own checks give the message."""
    with pytest.raises(TypeError):
        flow_graph(model, PROMPT, **kwargs)
    unchecked = inspect.unwrap(flow_graph)
    budget = dict(heads=kwargs.get("heads", 10), neurons=kwargs.get("neurons", (18, 7)))
    with pytest.raises((ValueError, TypeError)) as err:
        if "heads" in kwargs or "neurons" in kwargs:
            inspect.unwrap(Budget.__init__)(object.__new__(Budget), **budget)
        else:
            unchecked(model, PROMPT, **kwargs)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_bad_prompts(model):
    with pytest.raises(ValueError, match=r"tokens_or_text is empty"):
        flow_graph(model, [])
    with pytest.raises(ValueError, match=r"ids outside \[0, 64\).*max 99"):
        flow_graph(model, [0, 99])
    with pytest.raises(ValueError, match=r"40 tokens, more than the model's n_ctx=32"):
        flow_graph(model, [0] * 40)
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*one prompt"):
        flow_graph(model, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"no tokenizer"):
        flow_graph(model, "some text")


def test_unknown_target_token(text_model):
    graph = flow_graph(text_model, "ab a", target="b")
    assert graph.meta["target_token"] == "b" and graph.meta["target_source"] == "given"
    with pytest.raises(ValueError) as err:
        flow_graph(text_model, "ab a", target="abc")
    message = str(err.value)
    assert "target='abc'" in message and "3 tokens" in message and "single token" in message


def test_bad_overlay_tables(model):
    import pandas as pd

    with pytest.raises(ValueError, match=r"correlation lacks the columns \['excess_corr'\]"):
        flow_graph(model, PROMPT, correlation=pd.DataFrame({"layer": [0], "neuron": [1]}))
    with pytest.raises(ValueError, match=r"families lacks the columns \['family'\]"):
        flow_graph(model, PROMPT, families=pd.DataFrame({"layer": [0], "neuron": [1]}))
