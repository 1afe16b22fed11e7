"""Triton kernels for the hot ops, each matching the PyTorch form of its op in `einsearch.ops`.

`gla`, `delta`, `scan`, `aaren` and `rnn` hold `gla_triton`, `delta_rule_triton`,
`scan_diag_triton`, `aaren_triton` and `rnn_states_triton`, with the arguments and results of
`einsearch.ops.gla.gla_chunked`, `ops.delta.delta_rule_chunked`, `ops.scan.scan_diag_chunked`,
`ops.aaren.aaren_chunked` and `ops.rnn.naive_rnn_states`; `tiles` holds the loads and stores they
share.  The op functions in `einsearch.ops` (`gla`, `delta_rule`, ...) choose, per call, the kernel
(CUDA tensors, Triton importable) or the PyTorch form; EINSEARCH_KERNELS=torch|triton forces a
choice (`einsearch.ops.dispatch`).  These modules import Triton and are loaded only when a kernel
runs, so the package imports without it; they import nothing from the rest of einsearch.
"""
