"""Triton kernels for the hot primitives, each beside the PyTorch reference it must match.

`einsearch.kernels.dispatch` has one function per op (`gla`, `delta_rule`, `scan_diag`, `aaren`,
`rnn_states`) that picks, per call, the kernel (CUDA tensors, Triton importable) or the PyTorch
chunked form; EINSEARCH_KERNELS=torch|triton forces a choice.  The kernel modules (`gla`,
`delta`, `scan`, `aaren`, `rnn`) import Triton and are loaded only when a kernel runs, so this
package imports without it.  (Nothing is re-exported here: `gla` and `aaren` name both a
dispatch function and a kernel module, and importing the module would rebind the name.)
"""
