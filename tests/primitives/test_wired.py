"""wired(...): the shared contract over two node types and three graph families, the DAG against
networkx, hand-composed small nets, and the build errors."""

import networkx as nx
import pytest
import torch

import einsearch
from einsearch.primitives.base import BuildError
from tests.contract import PrimitiveContract


class TestWiredConvWS(PrimitiveContract):
    arch = "wired(ws, conv(k=2), nodes=6, k=2, p=0.5, seed=1)"
    constant_state = True


class TestWiredConvBA(PrimitiveContract):
    arch = "wired(ba, conv(k=2), nodes=5, seed=0)"
    constant_state = True


class TestWiredConvER(PrimitiveContract):
    arch = "wired(er, conv(k=2), nodes=5, p=0.5, seed=0)"
    constant_state = True


class TestWiredAttentionWS(PrimitiveContract):
    arch = "wired(ws, attn(softmax, heads=2, pos=rope), nodes=5, seed=3)"
    constant_state = False


class TestWiredAttentionBA(PrimitiveContract):
    arch = "wired(ba, attn(softmax, heads=2, pos=rope), nodes=4, k=1, seed=2)"
    constant_state = False


class TestWiredAttentionER(PrimitiveContract):
    arch = "wired(er, attn(softmax, heads=2, pos=rope), nodes=4, p=0.6, seed=1)"
    constant_state = False


# ---------------------------------------------------------------------------- the graph


@pytest.mark.parametrize(
    "kind, rest, graph",
    [
        ("ws", "nodes=8, seed=5", nx.watts_strogatz_graph(8, 4, 0.25, seed=5)),
        ("ws", "nodes=7, k=2, p=0.9, seed=0", nx.watts_strogatz_graph(7, 2, 0.9, seed=0)),
        ("ba", "nodes=9, seed=4", nx.barabasi_albert_graph(9, 2, seed=4)),
        ("ba", "nodes=6, k=3, seed=1", nx.barabasi_albert_graph(6, 3, seed=1)),
        ("er", "nodes=8, seed=2", nx.erdos_renyi_graph(8, 0.25, seed=2)),
        ("er", "nodes=6, p=0.7, seed=3", nx.erdos_renyi_graph(6, 0.7, seed=3)),
    ],
)
def test_dag_is_the_networkx_graph_oriented_low_to_high(kind, rest, graph):
    module = einsearch.build(f"wired({kind}, linear(), {rest})", 4)
    dag = nx.DiGraph()
    dag.add_nodes_from(graph.nodes())
    dag.add_edges_from((min(u, v), max(u, v)) for u, v in graph.edges())
    assert nx.is_directed_acyclic_graph(dag)
    assert sorted(module.edges) == sorted(dag.edges())
    assert len(module.nodes) == graph.number_of_nodes()
    assert module.sinks == [n for n in sorted(dag.nodes()) if dag.out_degree(n) == 0]
    for j in dag.nodes():
        assert sorted(i for _, i in module.incoming[j]) == sorted(dag.predecessors(j))


def test_nodes_are_separate_copies_with_one_weight_per_edge():
    torch.manual_seed(0)
    module = einsearch.build("wired(ws, mlp(expand=2, act=gelu), nodes=6, seed=0)", 8)
    one = einsearch.build("mlp(expand=2, act=gelu)", 8)
    assert einsearch.costs(module, 8).params == 6 * einsearch.costs(one, 8).params + len(module.edges)
    first, second = (node.parameters().__next__() for node in module.nodes[:2])
    assert first.data_ptr() != second.data_ptr() and not torch.equal(first, second)


def test_costs_sum_over_nodes():
    module = einsearch.build("wired(er, attn(softmax, heads=2, window=3, pos=none), nodes=5, p=0.5, seed=0)", 8)
    one = einsearch.build("attn(softmax, heads=2, window=3, pos=none)", 8)
    assert module.flops(20) == 5 * one.flops(20)
    assert module.state_size(20) == 5 * one.state_size(20)


# ---------------------------------------------------------------------------- hand-composed nets


def test_two_node_chain_is_the_hand_composition():
    """ba with 2 nodes and k=1 is the single edge 0 → 1: out = M1(σ(w) M0(x))."""
    torch.manual_seed(0)
    module = einsearch.build("wired(ba, conv(k=3), nodes=2, k=1, seed=0)", 4)
    assert list(module.edges) == [(0, 1)]
    with torch.no_grad():
        module.edge_logits.fill_(0.7)
    m0, m1 = module.nodes
    x = torch.randn(2, 7, 4)
    expected = m1(torch.sigmoid(torch.tensor(0.7)) * m0(x))
    torch.testing.assert_close(module(x), expected)


def test_two_unconnected_nodes_average():
    """er with 2 nodes and no edge: both take x, both are outputs: out = (M0(x) + M1(x)) / 2."""
    torch.manual_seed(0)
    module = einsearch.build("wired(er, conv(k=2), nodes=2, p=0.5, seed=0)", 4)
    assert list(module.edges) == []
    m0, m1 = module.nodes
    x = torch.randn(2, 7, 4)
    torch.testing.assert_close(module(x), (m0(x) + m1(x)) / 2)


def test_diamond_by_hand():
    """A three-node net with edges 0→1, 0→2, 1→2: out = M2(σ(a) y0 + σ(b) y1), y1 = M1(σ(c) y0)."""
    torch.manual_seed(0)
    module = einsearch.build("wired(ws, linear(), nodes=3, k=2, p=0.1, seed=0)", 4)
    assert list(module.edges) == [(0, 1), (0, 2), (1, 2)]  # k=2 on a ring of 3 joins every pair
    with torch.no_grad():
        module.edge_logits.copy_(torch.tensor([0.3, -1.0, 2.0]))  # (0,1), (0,2), (1,2)
    m0, m1, m2 = module.nodes
    s = torch.sigmoid
    x = torch.randn(1, 5, 4)
    y0 = m0(x)
    y1 = m1(s(torch.tensor(0.3)) * y0)
    expected = m2(s(torch.tensor(-1.0)) * y0 + s(torch.tensor(2.0)) * y1)
    torch.testing.assert_close(module(x), expected)


# ---------------------------------------------------------------------------- build errors


@pytest.mark.parametrize(
    "kind, rest, message",
    [
        ("ws", "nodes=4, seed=0", "k < nodes"),  # default k=4
        ("ws", "nodes=3, k=3, seed=0", "k < nodes"),
        ("ba", "nodes=2, seed=0", "k < nodes"),  # default k=2
        ("ba", "nodes=5, k=7, seed=0", "k < nodes"),
    ],
)
def test_impossible_graphs_raise_build_error(kind, rest, message):
    with pytest.raises(BuildError, match=message):
        einsearch.build(f"wired({kind}, linear(), {rest})", 4)


@pytest.mark.parametrize("text", ["wired(ba, linear(), nodes=5, p=0.5, seed=0)", "wired(er, linear(), nodes=5, k=2, seed=0)"])
def test_a_parameter_the_graph_does_not_take_is_a_syntax_error(text):
    with pytest.raises(einsearch.ArchSyntaxError, match="expected"):
        einsearch.parse(text)
