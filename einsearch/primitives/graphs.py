"""Random graphs for sparse wiring (Xie et al. 2019; sparse RNNs), from networkx.

One function draws every graph einsearch uses, so a module records exactly which graph it was
built from (`GraphArgs`) and an exported module can carry the edges instead of networkx.
"""

from __future__ import annotations

from typing import NamedTuple

KINDS = ("ws", "ba", "er")


class GraphArgs(NamedTuple):
    kind: str  # ws (Watts–Strogatz), ba (Barabási–Albert), er (Erdős–Rényi)
    nodes: int
    k: int | None  # ws: ring neighbours per node; ba: edges per new node
    p: float | None  # ws: rewiring probability; er: edge probability
    seed: int


def random_graph(args: GraphArgs) -> tuple[tuple[int, int], ...]:
    """Undirected edges (i, j), i < j, sorted, of the networkx graph that `args` names."""
    import networkx as nx

    kind, nodes, k, p, seed = args
    if kind == "ws":
        graph = nx.watts_strogatz_graph(nodes, k, p, seed=seed)
    elif kind == "ba":
        graph = nx.barabasi_albert_graph(nodes, k, seed=seed)
    elif kind == "er":
        graph = nx.erdos_renyi_graph(nodes, p, seed=seed)
    else:
        raise ValueError(f"unknown graph {kind!r}; expected one of {', '.join(KINDS)}")
    return tuple(sorted((min(u, v), max(u, v)) for u, v in graph.edges()))
