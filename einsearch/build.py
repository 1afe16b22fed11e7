"""Arch -> torch.nn.Module.

`Builder` has one method per node rule of the grammar, named like the rule; each receives the
node and returns a `Mixer` of the builder's width.  Token-mixer families are imported where
they are built, so building a small architecture does not import every primitive module.

Every module the builder returns carries ``arch_path``: the path of its node in the tree (child
indices from the root, as in `einsearch.grammar.evolve`), so that weights can be matched node by
node between two trees (`einsearch.inherit`).  The copies inside ``wired(...)`` share their
node's path.

`check_size` refuses, before anything is built, a tree whose construction alone would take
minutes or gigabytes: too many module copies (each ``wired`` node is a fresh copy of its child)
or a random graph too large to draw.  `build` calls it first.
"""

from __future__ import annotations

from einsearch.arch import Arch
from einsearch.grammar import parse
from einsearch.primitives.attention import SoftmaxAttention
from einsearch.primitives.base import BuildError, Mixer
from einsearch.primitives.channel import MLP, Act, Identity, Linear, Norm
from einsearch.primitives.combinators import Gate, Par, Repeat, Res, Seq
from einsearch.primitives.local import Conv, Shift


MAX_MODULES = 10_000  # primitive modules in one block; building one takes ~0.4 ms and ~1 KB or more
MAX_WIRED_NODES = 512  # networkx draws an er graph by trying every pair of nodes (~15 µs a pair here)


def module_count(arch: Arch) -> int:
    """How many primitive modules building `arch` creates: ``wired`` builds a copy of its child
    per node, ``repeat`` shares one."""
    if not arch.children:
        return 1
    inner = sum(module_count(child) for child in arch.children)
    return arch["nodes"] * inner if arch.op == "wired" else inner


def check_size(arch: Arch) -> None:
    """Raise BuildError if building `arch` would create more than MAX_MODULES modules or draw a
    graph of more than MAX_WIRED_NODES nodes; cheap (no module is built)."""
    for node in arch.walk():
        if node.op == "wired" and node["nodes"] > MAX_WIRED_NODES:
            raise BuildError(f"wired: nodes={node['nodes']:,} is too large; at most {MAX_WIRED_NODES} nodes per graph")
    count = module_count(arch)
    if count > MAX_MODULES:
        raise BuildError(f"{arch.op}: builds {count:,} modules (wired copies); at most {MAX_MODULES:,} per block")


class Builder:
    def __init__(self, d_model: int):
        if d_model < 1:
            raise BuildError(f"d_model must be a positive integer, got {d_model}")
        self.d = d_model
        self.path: tuple[int, ...] = ()  # of the node being built

    def __call__(self, arch: Arch) -> Mixer:
        method = getattr(self, arch.op, None)
        if method is None:
            raise BuildError(f"{arch.op}: no builder for this node")
        module = method(arch)
        module.arch_path = self.path
        return module

    def _child(self, arch: Arch, i: int) -> Mixer:
        """The module of `arch`'s i-th child, built at the child's path."""
        outer, self.path = self.path, self.path + (i,)
        try:
            return self(arch.children[i])
        finally:
            self.path = outer

    def _children(self, arch: Arch) -> list[Mixer]:
        return [self._child(arch, i) for i in range(len(arch.children))]

    # combinators
    def seq(self, a: Arch) -> Mixer:
        return Seq(self.d, self._children(a))

    def res(self, a: Arch) -> Mixer:
        return Res(self.d, self._child(a, 0))

    def par(self, a: Arch) -> Mixer:
        return Par(self.d, self._children(a), agg=a["agg"])

    def gate(self, a: Arch) -> Mixer:
        value, gate = self._children(a)
        return Gate(self.d, value, gate, fn=a["fn"])

    def repeat(self, a: Arch) -> Mixer:
        return Repeat(self.d, self._child(a, 0), n=a["n"])

    # channel and local
    def mlp(self, a: Arch) -> Mixer:
        return MLP(self.d, expand=a["expand"], act=a["act"])

    def norm(self, a: Arch) -> Mixer:
        return Norm(self.d, kind=a.variant)

    def linear(self, a: Arch) -> Mixer:
        return Linear(self.d)

    def act(self, a: Arch) -> Mixer:
        return Act(self.d, fn=a.variant)

    def conv(self, a: Arch) -> Mixer:
        return Conv(self.d, k=a["k"])

    def shift(self, a: Arch) -> Mixer:
        return Shift(self.d)

    def identity(self, a: Arch) -> Mixer:
        return Identity(self.d)

    def wired(self, a: Arch) -> Mixer:
        from einsearch.primitives.wired import Wired

        def make_node() -> Mixer:
            return self._child(a, 0)

        return Wired(self.d, make_node, graph=a.variant, nodes=a["nodes"], k=a.get("k"), p=a.get("p"), seed=a["seed"])

    def hier(self, a: Arch) -> Mixer:
        from einsearch.primitives.hier import Hier

        slow, fast = self._children(a)
        return Hier(self.d, slow, fast, rate=a["rate"])

    # token mixers
    def attn(self, a: Arch) -> Mixer:
        if a.variant == "softmax":
            return SoftmaxAttention(self.d, a["heads"], a["pos"], window=a.get("window"), chunk=a.get("chunk"))
        if a.variant == "linear":
            from einsearch.primitives.linear_attention import LinearAttention

            return LinearAttention(self.d, a["heads"], phi=a["phi"])
        from einsearch.primitives.sparse_attention import (
            RoutingAttention,
            TopkBlockAttention,
        )

        if a.variant == "routing":
            return RoutingAttention(self.d, a["heads"], clusters=a["clusters"])
        return TopkBlockAttention(self.d, a["heads"], block=a["block"], k=a["k"])

    def scan(self, a: Arch) -> Mixer:
        from einsearch.primitives.scan import DiagScan, SSDScan

        if a.variant == "ssd":
            return SSDScan(self.d, a["heads"], state=a["state"])
        return DiagScan(self.d, state=a["state"], selective=a["selective"])

    def aaren(self, a: Arch) -> Mixer:
        from einsearch.primitives.scan import Aaren

        return Aaren(self.d, a["heads"])

    def mem(self, a: Arch) -> Mixer:
        if a.variant == "titans":
            from einsearch.primitives.titans import Titans

            return Titans(self.d, a["heads"], loss=a["loss"], retention=a["retention"], momentum=a["momentum"],
                          chunk=a.get("chunk"))
        from einsearch.primitives.memory import GLA, DeltaNet, RetNet

        if a.variant == "gla":
            return GLA(self.d, a["heads"])
        if a.variant == "retnet":
            return RetNet(self.d, a["heads"])
        return DeltaNet(self.d, a["heads"], gated=a["gated"])

    def rnn(self, a: Arch) -> Mixer:
        from einsearch.primitives.recurrent import RNN

        return RNN(self.d, cell=a.variant, heads=a["heads"], wiring=a["wiring"], parallel=a["parallel"],
                   recode=a.get("recode"))

    def rat(self, a: Arch) -> Mixer:
        from einsearch.primitives.rat import RAT

        return RAT(self.d, a["heads"], chunk=a["chunk"])


def build(arch: Arch | str, d_model: int) -> Mixer:
    """Compile an architecture (tree or text) into a module mapping (B, T, d_model) to the same shape."""
    tree = parse(arch) if isinstance(arch, str) else arch
    check_size(tree)
    return Builder(d_model)(tree)
