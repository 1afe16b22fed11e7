"""The fused LSTM/GRU step loop (`einsearch.kernels.rnn`) against `naive_rnn_states`, the loop
over the primitive's own cells.

Under the interpreter: float32 kernel vs float64 loop, T = 1 and 7, a head size that is not a
power of two (d = 5), batch sizes below and above the kernel's block of 16 sequences, with and
without an initial state; every state and the gradients of u, R, b and s0.
"""

import pytest
import torch

from einsearch.ops.rnn import naive_rnn_states, rnn_states
from tests.kernels.common import (
    assert_backends_agree,
    assert_gpu_matches,
    compare,
    forward_backward_seconds,
    needs_gpu,
    needs_interpreter,
)

pytest.importorskip("triton")
from einsearch.kernels.rnn import rnn_states_triton  # noqa: E402

GATES = {"lstm": 4, "gru": 3}
COMPONENTS = {"lstm": 2, "gru": 1}


def rnn_inputs(cell, B, T, H=2, d=5, s0=True, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    G = GATES[cell]
    inputs = {
        "cell": cell,
        "u": randn(B, T, H, G * d),
        "R": randn(H, d, G * d) / d**0.5,
        "b": 0.3 * randn(H, G * d),
        "s0": randn(B, H, COMPONENTS[cell] * d) if s0 else None,
    }
    return {n: t.to(device) if isinstance(t, torch.Tensor) else t for n, t in inputs.items()}


@needs_interpreter
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("B,T", [(3, 1), (3, 7)])
def test_matches_loop(cell, B, T):
    compare(rnn_states_triton, naive_rnn_states, rnn_inputs(cell, B, T), tol=1e-5)


@needs_interpreter
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_two_sequence_blocks_without_initial_state(cell):
    compare(rnn_states_triton, naive_rnn_states, rnn_inputs(cell, 17, 3, H=1, s0=False), tol=1e-5)


@needs_interpreter
def test_dispatch_forced_triton_equals_torch(monkeypatch):
    assert_backends_agree(rnn_states, rnn_inputs("lstm", 2, 4), monkeypatch)


def test_other_cells_use_the_loop(monkeypatch):
    """Cells without a fused kernel run the loop even when triton is forced."""
    inputs = rnn_inputs("gru", 2, 3)  # elman has one gate: keep gru's first block
    inputs["cell"] = "elman"
    inputs["u"], inputs["R"], inputs["b"] = inputs["u"][..., :5], inputs["R"][..., :5], inputs["b"][..., :5]
    monkeypatch.setenv("EINSEARCH_KERNELS", "triton")
    states = rnn_states(**inputs)
    torch.testing.assert_close(states, naive_rnn_states(**inputs))


# ---------------------------------------------------------------- GPU only


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_gpu_matches_loop(cell, dtype, tol):
    inputs = rnn_inputs(cell, 32, 256, H=4, d=32, device="cuda")
    assert_gpu_matches(rnn_states_triton, naive_rnn_states, inputs, dtype, tol)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gpu_faster_than_loop(cell):
    inputs = rnn_inputs(cell, 32, 1024, H=4, d=32, device="cuda")
    assert forward_backward_seconds(rnn_states_triton, inputs) < forward_backward_seconds(naive_rnn_states, inputs)
