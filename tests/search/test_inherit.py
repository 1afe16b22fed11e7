"""Weight inheritance (--inherit): the tensor copy between two trees, the trainer's hook, evolution's
parents, and a tiny evolution run whose children start from their parents' weights."""

import pytest
import torch
from typer.testing import CliRunner

from einsearch import parse
from einsearch.build import build
from einsearch.cli import app
from einsearch.inherit import inherit, module_paths, unchanged_paths
from einsearch.search import RunFolder, resume, start
from einsearch.search.record import TrialRecord
from einsearch.search.strategies import Evolution
from einsearch.tasks import get_task
from einsearch.train import Budget, TrainConfig, save_weights, train
from tests.search.conftest import TINY_SPACE, TINY_TASK, tiny_config

PARENT = parse("seq(res(seq(norm(rms), attn(softmax, heads=2, pos=rope))), res(seq(norm(rms), mlp(expand=2, act=gelu))))")
CHILD = parse("seq(res(seq(norm(rms), attn(softmax, heads=2, pos=rope))), res(seq(norm(rms), conv(k=3))))")
CHANGED = (1, 0, 1)  # the mlp, replaced by the conv


def shell(arch, d_model=16, layers=2, seed=0):
    torch.manual_seed(seed)
    return get_task(TINY_TASK).model(arch, d_model, layers)


def trained_looking(arch, d_model=16) -> dict[str, torch.Tensor]:
    """A state dict of `arch`'s shell with every tensor redrawn (nothing like a fresh initialisation)."""
    generator = torch.Generator().manual_seed(123)
    return {k: torch.randn(v.shape, generator=generator) for k, v in shell(arch, d_model).state_dict().items()}


def test_unchanged_subtrees_come_from_the_parent_and_the_changed_one_is_fresh():
    weights = trained_looking(PARENT)
    child, fresh = shell(CHILD), shell(CHILD)
    result = inherit(child, CHILD, PARENT, weights)

    assert result.paths == ((0,), (1, 0, 0)) and result.skipped == ()
    changed = [f"blocks.{i}.{name}." for i in range(2) for name in module_paths(child.blocks[i])[CHANGED]]
    state, fresh_state = child.state_dict(), fresh.state_dict()
    assert set(result.copied) == {k for k in state if not k.startswith(tuple(changed))}
    for key, tensor in state.items():
        if key in result.copied:  # same path and name in both trees here, so the parent's key is the same
            assert torch.equal(tensor, weights[key]), key
        else:
            assert key.startswith(tuple(changed)) and torch.equal(tensor, fresh_state[key]), key
    assert {"embed.weight", "head.weight", "norm.weight"} <= set(result.copied)  # the shell's own
    assert any(k.startswith(tuple(changed)) for k in state)  # the conv has weights, left fresh


def test_identical_trees_give_the_parents_function():
    weights = trained_looking(PARENT)
    parent, child = shell(PARENT), shell(PARENT, seed=1)
    parent.load_state_dict(weights)
    result = inherit(child, PARENT, PARENT, weights)
    assert result.paths == ((),) and result.count == len(weights)
    tokens = torch.randint(0, 32, (2, 16))
    assert torch.equal(child(tokens), parent(tokens))


def test_the_path_decides_not_the_module_name():
    """seq(A, B) -> par(A, B): the branches sit at `branches.i`, not `layers.i`, yet inherit."""
    parent = parse("seq(mlp(expand=2, act=gelu), conv(k=3))")
    child = parse("par(mlp(expand=2, act=gelu), conv(k=3), agg=add)")
    weights = trained_looking(parent)
    model = shell(child)
    result = inherit(model, child, parent, weights)
    assert result.paths == ((0,), (1,))
    for i in range(2):
        assert torch.equal(model.blocks[i].branches[0].up.weight, weights[f"blocks.{i}.layers.0.up.weight"])
        assert torch.equal(model.blocks[i].branches[1].conv.weight, weights[f"blocks.{i}.layers.1.conv.weight"])


def test_wired_copies_pair_in_order_and_extra_copies_stay_fresh():
    parent = parse("wired(ws, conv(k=2), nodes=5, k=2, seed=1)")
    child = parse("wired(ws, conv(k=2), nodes=6, k=2, seed=1)")
    weights, fresh = trained_looking(parent), shell(child)
    model = shell(child)
    result = inherit(model, child, parent, weights)
    assert result.paths == ((0,),)
    for j in range(5):
        assert torch.equal(model.blocks[0].nodes[j].conv.weight, weights[f"blocks.0.nodes.{j}.conv.weight"])
    assert torch.equal(model.blocks[0].nodes[5].conv.weight, fresh.blocks[0].nodes[5].conv.weight)
    assert not any(".edge_logits" in k for k in result.copied)  # the wired node itself changed


def test_shape_mismatch_is_skipped_and_left_fresh():
    weights = trained_looking(PARENT)
    weights["embed.weight"] = torch.randn(64, 16)  # another vocabulary
    child, fresh = shell(CHILD), shell(CHILD)
    result = inherit(child, CHILD, PARENT, weights)
    assert result.skipped == ("embed.weight",) and "embed.weight" not in result.copied
    assert torch.equal(child.embed.weight, fresh.embed.weight)

    wide = shell(CHILD, d_model=32)  # another width: nothing fits
    result = inherit(wide, CHILD, PARENT, weights)
    assert result.count == 0 and len(result.skipped) > 0


def test_unchanged_paths_lists_the_largest_subtrees_only():
    assert unchanged_paths(PARENT, PARENT) == [()]
    assert unchanged_paths(PARENT, CHILD) == [(0,), (1, 0, 0)]
    assert unchanged_paths(PARENT, parse("conv(k=3)")) == []


def test_builder_records_the_path_of_every_module():
    block = build(PARENT, 16)
    assert dict(module_paths(block))[CHANGED] == ["layers.1.body.layers.1"]
    assert {p for p, _ in module_paths(block).items()} == {
        (), (0,), (0, 0), (0, 0, 0), (0, 0, 1), (1,), (1, 0), (1, 0, 0), (1, 0, 1)
    }  # fmt: skip


def test_training_starts_from_the_parent(tmp_path):
    path = str(tmp_path / "parent.safetensors")
    parent = shell(PARENT)
    parent.load_state_dict(trained_looking(PARENT))
    save_weights(parent, path)
    config = TrainConfig(d_model=16, layers=2, budget=Budget.parse("1steps"), init_from=path, init_arch=PARENT.text)
    result = train(CHILD, TINY_TASK, config)
    assert result.ok and result.inherited == inherit(shell(CHILD), CHILD, PARENT, path).count > 3
    assert train(CHILD, TINY_TASK, TrainConfig(d_model=16, layers=2, budget=Budget.parse("1steps"))).inherited == 0
    with pytest.raises(ValueError, match="go together"):
        TrainConfig(init_from=path)


def record(number, arch, score=0.5, reused_from=None) -> TrialRecord:
    return TrialRecord(number=number, arch=parse(arch).text, id=parse(arch).id, status="ok", reason=None,
                       objectives=(score,), reused_from=reused_from)  # fmt: skip


def test_evolution_names_the_parent_of_each_child():
    evolution = Evolution(parse_space(), seed=0, seeds=(parse("res(conv(k=2))"),), population=4, tournament=2, crossover=0.5)
    assert evolution.propose().parent is None  # the seed itself
    evolution.observe(record(0, "res(conv(k=2))"))
    assert evolution.propose().parent == 0  # a mutation of the seed, which trial 0 trained
    evolution.observe(record(1, "res(mlp(expand=1, act=gelu))", 0.7))
    evolution.observe(record(2, "res(conv(k=2))", 0.5, reused_from=0))  # a duplicate stands for trial 0
    assert evolution.parents() == {0, 1}
    for _ in range(20):
        proposal = evolution.propose()
        assert proposal.origin in ("mutation", "crossover") and proposal.parent in (0, 1)


def parse_space():
    from einsearch.grammar import load_space

    return load_space(TINY_SPACE)


def test_evolution_run_with_inherit(tmp_path):
    """Children record their parent and start from its weights; possible parents keep theirs."""
    seed = "seq(res(conv(k=2)), res(mlp(expand=1, act=gelu)))"
    folder = RunFolder(tmp_path / "run")
    config = tiny_config(strategy="evolution", inherit=True, trials=7, seed_archs=(seed,), keep_weights=1, scheduler="fifo")
    outcome = start(config, folder, live=False)
    assert outcome.completed
    records = folder.trials()
    by_number = {r.number: r for r in records}
    children = [r for r in records if r.parent is not None and r.reused_from is None and r.status == "ok"]
    assert children and all(by_number[r.parent].status == "ok" for r in children)
    for r in children:  # the count the trainer reported is the count of tensors the two trees share
        parent = parse(by_number[r.parent].arch)
        expected = inherit(shell(parse(r.arch), layers=1), parse(r.arch), parent, trained_looking(parent)).count
        assert r.inherited == expected > 0
    assert any(unchanged_paths(parse(by_number[r.parent].arch), parse(r.arch)) for r in children)
    for number in outcome.search.strategy.parents():  # kept beyond keep_weights=1
        assert folder.weights_path(number).exists()

    outcome = resume(folder, trials=9, live=False)  # the population comes back by replay, weights and all
    assert outcome.completed
    later = [r for r in folder.trials()[7:] if r.parent is not None and r.reused_from is None and r.status == "ok"]
    assert all(r.inherited > 0 for r in later)


def test_without_inherit_children_still_name_parents_but_train_fresh(tmp_path):
    config = tiny_config(strategy="evolution", trials=4, seed_archs=("res(conv(k=2))",), scheduler="fifo")
    start(config, RunFolder(tmp_path / "run"), live=False)
    records = RunFolder(tmp_path / "run").trials()
    assert any(r.parent == 0 for r in records) and all(r.inherited == 0 for r in records)


def test_inherit_needs_evolution():
    with pytest.raises(ValueError, match="inherit needs the evolution strategy"):
        tiny_config(strategy="random", inherit=True, scheduler="fifo")
    result = CliRunner().invoke(app, ["run", "--strategy", "random", "--inherit", "--trials", "1"])
    assert result.exit_code == 2 and "inherit needs the evolution strategy" in result.output
