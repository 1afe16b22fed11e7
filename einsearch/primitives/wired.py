"""Randomly wired networks (Xie, Kirillov, Girshick and He 2019, "Exploring Randomly Wired
Neural Networks for Image Recognition"), as a combinator over sequence mixers."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from einsearch.primitives.base import BuildError, Mixer, State
from einsearch.primitives.graphs import KINDS, GraphArgs, random_graph


def wired_graph(graph: str, nodes: int, k: int | None, p: float | None, seed: int) -> GraphArgs:
    """The random graph behind `wired(...)`, with the defaults filled in:

    ws: watts_strogatz_graph(N, k or 4, p or 0.25, seed), a ring where each node joins its k
        nearest neighbours (⌊k/2⌋ on each side), each edge rewired with probability p; needs k < N.
    ba: barabasi_albert_graph(N, k or 2, seed), preferential attachment of each new node by k
        edges; needs k < N.
    er: erdos_renyi_graph(N, p or 0.25, seed), each pair joined with probability p.

    Raises BuildError for a combination networkx cannot build and for a parameter the generator
    does not take.  Orienting every edge from the lower to the higher index (as `Wired` does)
    makes the graph acyclic, and index order a topological order.
    """
    if graph == "ws":
        k = 4 if k is None else k
        if k >= nodes:
            raise BuildError(f"wired: graph=ws needs k < nodes (ring neighbours per node), got k={k}, nodes={nodes}")
        return GraphArgs("ws", nodes, k, 0.25 if p is None else p, seed)
    if graph == "ba":
        k = 2 if k is None else k
        if p is not None:
            raise BuildError("wired: graph=ba takes k (edges per new node), not p")
        if k >= nodes:
            raise BuildError(f"wired: graph=ba needs k < nodes (edges per new node), got k={k}, nodes={nodes}")
        return GraphArgs("ba", nodes, k, None, seed)
    if graph == "er":
        if k is not None:
            raise BuildError("wired: graph=er takes p (edge probability), not k")
        return GraphArgs("er", nodes, None, 0.25 if p is None else p, seed)
    raise BuildError(f"wired: unknown graph {graph!r}; expected one of {', '.join(KINDS)}")


class Wired(Mixer):
    """A random DAG of fresh copies of a module M (Xie et al. 2019).

    Nodes 0..N−1 in index (topological) order; node j's input is the weighted sum of its
    predecessors' outputs, with one positive weight per edge, σ(w_ij) (the paper's aggregation),
    or the block input x when it has no predecessor:

        a_j = Σ_{i → j} σ(w_ij) y_i     (a_j = x if j has no predecessor)
        y_j = M_j(a_j)
        out = mean { y_j : j has no successor }

    Edge weights start at w = 0 (σ = 1/2).  `step` threads each node's state through the same
    graph; FLOPs and state size are the sums over the nodes (the weighted sums are element-wise).
    """

    def __init__(
        self,
        d_model: int,
        make_node: Callable[[], Mixer],
        graph: str,
        nodes: int,
        k: int | None = None,
        p: float | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.d_model = d_model
        self.graph = wired_graph(graph, nodes, k, p, seed)
        self.edges = random_graph(self.graph)  # (i, j) with i < j: oriented low -> high
        self.nodes = nn.ModuleList(make_node() for _ in range(nodes))
        self.edge_logits = nn.Parameter(torch.zeros(len(self.edges)))  # w_ij, in the order of self.edges
        # incoming[j]: (edge index, source node) of every edge into j
        self.incoming: list[list[tuple[int, int]]] = [[] for _ in range(nodes)]
        for e, (i, j) in enumerate(self.edges):
            self.incoming[j].append((e, i))
        has_successor = {i for i, _ in self.edges}
        self.sinks = [j for j in range(nodes) if j not in has_successor]

    def _node_input(self, j: int, x: Tensor, outputs: list[Tensor]) -> Tensor:
        if not self.incoming[j]:
            return x
        weights = torch.sigmoid(self.edge_logits)
        return sum(weights[e] * outputs[i] for e, i in self.incoming[j])

    def _output(self, outputs: list[Tensor]) -> Tensor:
        return torch.stack([outputs[j] for j in self.sinks]).mean(0)

    def forward(self, x: Tensor) -> Tensor:
        outputs: list[Tensor] = []
        for j, node in enumerate(self.nodes):
            outputs.append(node(self._node_input(j, x, outputs)))
        return self._output(outputs)

    def init_state(self, batch: int) -> State:
        return tuple(node.init_state(batch) for node in self.nodes)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        outputs: list[Tensor] = []
        new_state = []
        for j, (node, s) in enumerate(zip(self.nodes, state)):
            y, s = node.step(self._node_input(j, x, outputs), s)
            outputs.append(y)
            new_state.append(s)
        return self._output(outputs), tuple(new_state)

    def flops(self, seq_len: int) -> float:
        return sum(node.flops(seq_len) for node in self.nodes)

    def state_size(self, seq_len: int) -> int:
        return sum(node.state_size(seq_len) for node in self.nodes)
