"""einsearch.inspect: attention weights recomputed from SoftmaxAttention, sink scores and ACT
checked against hand-worked matrices and torch's SDPA, the PNG grid, and `einsearch inspect`."""

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from einsearch.cli import app
from einsearch.inspect import (
    CELL,
    DPI,
    ActConfig,
    AttentionMap,
    act,
    attention_weights,
    calibrated,
    capture,
    mix,
    plot_attention,
    sink_scores,
    sink_tokens,
)
from einsearch.primitives.attention import SoftmaxAttention
from einsearch.grammar import parse
from einsearch.search import RunFolder
from einsearch.search.record import TrialRecord
from einsearch.tasks import get_task
from einsearch.train import save_weights
from tests.search.conftest import TINY_TASK, tiny_config

runner = CliRunner()
ATTN = "res(attn(softmax, heads=2, pos=rope))"

# A causal attention matrix worked by hand (T = 4): key 1 receives far more than its share.
A = torch.tensor([
    [1.0, 0.0, 0.0, 0.0],
    [0.5, 0.5, 0.0, 0.0],
    [0.2, 0.6, 0.2, 0.0],
    [0.1, 0.6, 0.1, 0.2],
])  # fmt: skip
CAUSAL = torch.ones(4, 4).tril().bool()


@pytest.mark.parametrize("options", [dict(pos="rope"), dict(pos="none", window=3), dict(pos="rope", chunk=4), dict(pos="rope", window=2, chunk=4)])
def test_explicit_weights_reproduce_the_sdpa_output(options):
    torch.manual_seed(0)
    module = SoftmaxAttention(16, 2, **options)
    x = torch.randn(3, 9, 16)
    weights, v, mask = attention_weights(module, x)
    assert weights.shape == (3, 2, 9, 9)
    assert torch.allclose(mix(module, weights, v), module(x), atol=1e-6, rtol=0)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 2, 9), atol=1e-6)
    assert (weights[..., ~mask] == 0).all()


def test_sink_scores_on_a_hand_made_matrix():
    # received (mean over the queries that see a key): 1.8/4, 1.7/3, 0.3/2, 0.2/1
    # alpha=1.5: threshold 0.375 -> key 1 only; alpha=0.7: threshold 0.175 -> keys 1 and 3
    one = AttentionMap("x", A[None, None], CAUSAL)
    (s,) = sink_scores([one], alpha=1.5)
    assert (s.site, s.head) == ("x", 0)
    assert s.first == pytest.approx(1.8 / 4) and s.other == pytest.approx(1.7 / 4) and s.sinks == 1
    (s,) = sink_scores([one], alpha=0.7)
    assert s.other == pytest.approx((1.7 + 0.2) / 4) and s.sinks == 2
    assert sink_tokens(A, CAUSAL, 0.7).tolist() == [False, True, False, True]  # the first token is never an "other" sink


def test_act_on_a_hand_made_matrix():
    sinks = torch.tensor([False, True, False, False])
    out = act(A, sinks, beta=0.4)
    expected = torch.tensor([
        [1.0, 0.0, 0.0, 0.0],      # no attention on the sink: unchanged
        [0.8, 0.2, 0.0, 0.0],      # 0.3 removed from the sink, all to key 0
        [0.38, 0.24, 0.38, 0.0],   # 0.36 removed, shared 0.2 : 0.2
        [0.19, 0.24, 0.19, 0.38],  # 0.36 removed, shared 0.1 : 0.1 : 0.2
    ])  # fmt: skip
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.sum(-1), torch.ones(4), atol=1e-6)
    assert torch.allclose(out[:, 1], 0.4 * A[:, 1])
    # a row whose visible keys are all sinks keeps its attention
    both = act(A, torch.tensor([True, True, False, False]), beta=0.4)
    assert torch.equal(both[:2], A[:2]) and torch.allclose(both.sum(-1), torch.ones(4), atol=1e-6)


def test_calibrating_a_head_moves_its_attention_and_leaves_the_others():
    torch.manual_seed(1)
    task = get_task(TINY_TASK)
    model = task.model(parse(ATTN), 16, 1)
    module = model.blocks[0].body  # res(attn): the attention module
    x = torch.randn(2, 6, 16)
    plain = module(x)
    with calibrated(model, [("b0.a0", 1)], ActConfig(alpha=1e-3, beta=1.0)):
        assert torch.allclose(module(x), plain, atol=1e-6)  # beta = 1 keeps everything
    # alpha tiny: every key after the first is a sink; beta = 0 gives all of head 1's attention to key 0
    with calibrated(model, [("b0.a0", 1)], ActConfig(alpha=1e-3, beta=0.0)):
        out = module(x)
    q, k, v = module._heads(x, torch.arange(6))  # (B, H, T, d)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # torch's own attention, head 0 kept
    y[:, 1] = v[:, 1, :1].expand(-1, 6, -1)  # head 1: value of the first token at every position
    assert torch.allclose(out, module.out(y.transpose(1, 2).reshape(2, 6, 16)), atol=1e-6)


def test_capture_names_every_call_of_a_shared_module():
    task = get_task(TINY_TASK)
    batch = next(task.data().test.batches(4))
    model = task.model(parse("repeat(res(attn(softmax, heads=2, pos=rope)), n=2)"), 16, 1)
    maps = capture(model, task, batch)
    assert [m.site for m in maps] == ["b0.a0#0", "b0.a0#1"]
    assert maps[0].weights.shape == (4, 2, 16, 16) and not torch.equal(maps[0].weights, maps[1].weights)


def test_the_attention_grid_png(tmp_path):
    import matplotlib.image

    torch.manual_seed(2)
    maps = [AttentionMap(site, torch.rand(3, 2, 5, 5).tril().softmax(-1), CAUSAL.new_ones(5, 5).tril()) for site in ("b0.a0", "b1.a0", "b2.a0")]
    path = plot_attention(maps, tmp_path / "attention.png")
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (round(3 * CELL * DPI), round(2 * CELL * DPI))  # 3 rows of calls, 2 columns of heads
    assert image[..., :3].var() > 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two run folders of one scored trial each, written as a search writes them (config.json,
    trials.jsonl, the trial's weights; untrained weights: inspecting does not care): one with
    softmax attention, one without."""
    root = tmp_path_factory.mktemp("inspect")
    task, folders = get_task(TINY_TASK), {}
    for name, text in (("attn", ATTN), ("conv", "res(conv(k=2))")):
        folder = RunFolder(root / name)
        folder.create(tiny_config(d_model=16, layers=1).to_dict())
        arch = parse(text)
        torch.manual_seed(0)
        save_weights(task.model(arch, 16, 1), str(folder.weights_path(0)))
        folder.append(TrialRecord(number=0, arch=arch.text, id=arch.id, status="ok", reason=None, objectives=(0.5,)))
        folders[name] = folder.path
    return folders


def test_inspect_a_run(runs, tmp_path):
    result = runner.invoke(app, ["inspect", str(runs["attn"]), "--out", str(tmp_path), "--examples", "8", "--calibrate", "--samples", "8"])
    assert result.exit_code == 0, result.output
    assert "first token" in result.output and "b0.a0" in result.output
    assert (tmp_path / "attention.png").exists()
    assert "test accuracy:" in result.output and "with ACT" in result.output


def test_inspect_an_architecture_with_weights(runs, tmp_path):
    weights = str(runs["attn"] / "weights" / "0.safetensors")
    args = ["inspect", ATTN, "--weights", weights, "--task", TINY_TASK, "--d-model", "16", "--layers", "1", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "attention.png").exists()


def test_inspect_bad_input_is_one_line_and_status_2(runs, tmp_path):
    weights = str(runs["attn"] / "weights" / "0.safetensors")
    cases = {
        "no softmax attention": ["inspect", str(runs["conv"]), "--out", str(tmp_path)],
        "needs --weights": ["inspect", ATTN, "--task", TINY_TASK],
        "no rank 5": ["inspect", str(runs["attn"]), "--rank", "5", "--out", str(tmp_path)],
        "no such folder": ["inspect", str(runs["attn"]), "--out", str(tmp_path / "missing")],
        "do not fit": ["inspect", ATTN, "--weights", weights, "--task", TINY_TASK, "--d-model", "32", "--layers", "1", "--out", str(tmp_path)],
        "cannot read weights": ["inspect", ATTN, "--weights", str(tmp_path / "none.safetensors"), "--task", TINY_TASK],
        "unknown task": ["inspect", str(runs["attn"]), "--task", "nope"],
    }
    for words, args in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (words, result.output)
        assert result.output.startswith("error: ") and words in result.output, (words, result.output)
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
