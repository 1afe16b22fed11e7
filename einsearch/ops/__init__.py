"""The math of the recurrent token mixers, as plain functions of tensors: the ground floor.

One module per op, each written in the manner of flash-linear-attention's `fla/ops/<op>/`:

    gla.py     gated linear attention; RetNet (a decay per head) and linear attention (no decay)
    delta.py   the (gated) delta rule
    scan.py    the diagonal recurrence of S4D / Mamba
    aaren.py   softmax attention over the prefix as a scan (Aaren)
    rnn.py     nonlinear cells (lstm, gru, rhn, slstm, elman) and their loop over time
    newton.py  Newton's method over the sequence, the parallel form of a nonlinear recurrence
    chunks.py  what the chunked matrix memories share (chunking, the causal decay)
    dispatch.py  whether a call runs a Triton kernel (`use_triton`, EINSEARCH_KERNELS)

An op module holds its step and its plain loop (the spec, `naive_...`), its chunked PyTorch form
(`..._chunked`) and chunk-size default, and, where a Triton kernel exists, the function the
modules call (`gla`, `delta_rule`, `scan_diag`, `aaren`, `rnn_states`): the kernel on CUDA
tensors, the PyTorch form elsewhere.  Its `TORCH_FORMS` names that PyTorch form, which is what
an export (`einsearch.export`, torch only) runs instead.

Imports run one way: ops import only torch and each other, and `einsearch.kernels.<op>` only
inside the function that has chosen the kernel; `einsearch.kernels` imports nothing from here;
`einsearch.primitives` (the nn.Modules) import ops.  Nothing is re-exported here, so that a module
and the function of the same name (`gla`, `aaren`) never shadow each other.
"""
