"""Vocabulary-projected flow graphs of a forward pass (VISIT, Katz & Belinkov 2023).

``flow_graph(model, text, position=-1)`` (or ``model.universality.flow_graph(...)``) decomposes
one forward pass at one position into residual, block, head and neuron nodes, reads every node
through the final LayerNorm and the unembedding, and returns a
:class:`~tl_universality.flow.result.FlowGraph` (nodes and edges tables, networkx, PNG, HTML).
:mod:`~tl_universality.flow.observations` measures VISIT's two observations over a token stream.

Modules: :mod:`.readout` (the logit lens), :mod:`.prune` (score and budget), :mod:`.graph` (the
decomposition), :mod:`.result` (the result), :mod:`.html` (the interactive page),
:mod:`.observations` (LayerNorm as a semantic filter, always-on neurons).
"""

from tl_universality.flow.graph import flow_graph
from tl_universality.flow.prune import Budget
from tl_universality.flow.readout import read_vectors, vector_logits
from tl_universality.flow.result import FlowGraph

__all__ = ["Budget", "FlowGraph", "flow_graph", "read_vectors", "vector_logits"]
