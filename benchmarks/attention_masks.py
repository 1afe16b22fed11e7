"""Attention under four mask patterns, through each way torch and einsearch can compute it
(in the spirit of the Long-Context Attention Benchmark: one mask, several backends, growing T).

    python benchmarks/attention_masks.py [--lengths 256,512,1024,2048,4096] [--heads 4] [--dim 64]
                                         [--batch 1] [--repeats 3] [--device cpu|cuda] [--json out.json]

Masks (position i may see position j iff):

    causal         j ≤ i
    window         i − W < j ≤ i                               (einsearch attn(softmax, window=W))
    topk_blocks    j in one of the k earlier blocks whose mean key scores highest against q_i,
                   or j in i's own block with j ≤ i             (einsearch attn(topk_blocks, block, k);
                   the choice is made once from the inputs, per batch element and head)
    document       doc(j) = doc(i) and j ≤ i                   (block-diagonal causal: several
                   documents of seeded random lengths packed into one sequence)

Methods, each on the same q, k, v (B, H, T, d):

    sdpa_mask      torch SDPA with the dense boolean mask (the baseline of every ratio)
    sdpa_causal    torch SDPA with is_causal=True (causal only; this is also what einsearch's
                   attn(softmax) without window or chunk calls)
    flex           FlexAttention with a BlockMask from create_block_mask, compiled with
                   torch.compile (uncompiled, flex_attention materialises the full score matrix);
                   create_block_mask's default 128 × 128 tiles.
                   Compile time (this thread's CPU and the C++ compiler's) is measured on the first
                   call at each T and reported apart; per-call times exclude it.  torch 2.13 has no
                   FlexAttention backward on CPU: forward only there.
    einsearch      the attention path of einsearch's module, as its forward runs it: the mask built
                   on every call by the module's own functions (`visible` for window, `choose_blocks`
                   + `block_mask` for topk_blocks), then SDPA.  Projections are left out; that the
                   module computes exactly this is checked once (module(x) against out(sdpa_mask)).

Timing: median of --repeats calls after one warm-up, forward under no_grad and forward+backward
(gradient of a fixed random cotangent), wall (perf_counter) and CPU of this thread
(time.thread_time; one torch thread).  Ratios are against sdpa_mask on the same pass, both for
CPU time (the steadier one on a loaded machine) and wall time.  Mask construction (dense mask, BlockMask) is timed apart
and not included in the per-call times except for the einsearch rows, which rebuild theirs.

Memory: peak resident-set growth during one call, in MiB: the kernel's high-water mark (VmHWM)
is reset through /proc/self/clear_refs before the call and read after.  glibc is told to serve
every allocation above 64 KiB with mmap (MALLOC_MMAP_THRESHOLD_, set by re-executing the script),
so freed tensors leave the resident set and each call's growth is its own.  tracemalloc does not
see torch's allocations.  On CUDA: torch.cuda.max_memory_allocated growth instead.

Reading the memory column: SDPA turns a boolean mask into an additive float mask of the mask's
shape, 4 bytes per (query, key) (per head for topk_blocks), which dominates sdpa_mask's peak.

Correctness: each method's output (and, for forward+backward, dq) is compared with sdpa_mask on
the same inputs; the max abs difference is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

WINDOW = 256  # sliding-window width W
BLOCK, TOPK = 64, 2  # topk_blocks: block size and number of earlier blocks chosen
DOCUMENTS = 4  # documents per sequence in the document mask
MMAP_THRESHOLD = "65536"

# ---------------------------------------------------------------------------- mask builders


def causal_mask(T: int, device: str = "cpu") -> Tensor:
    """(T, T) bool: i sees j iff j ≤ i."""
    i = torch.arange(T, device=device)
    return i[None, :] <= i[:, None]


def window_mask(T: int, window: int, device: str = "cpu") -> Tensor:
    """(T, T) bool: i sees j iff i − W < j ≤ i."""
    i = torch.arange(T, device=device)
    j = i[None, :]
    return (j <= i[:, None]) & (j > i[:, None] - window)


def document_lengths(T: int, documents: int, seed: int = 0) -> list[int]:
    """Seeded random lengths (each ≥ 1) of `documents` documents that fill T positions."""
    g = torch.Generator().manual_seed(seed)
    cuts = torch.randperm(T - 1, generator=g)[: documents - 1] + 1  # distinct cut points in 1..T−1
    bounds = [0, *sorted(cuts.tolist()), T]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def document_ids(lengths: list[int], device: str = "cpu") -> Tensor:
    """(T,) long: the document of each position."""
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))


def document_mask(lengths: list[int], device: str = "cpu") -> Tensor:
    """(T, T) bool: i sees j iff they are in the same document and j ≤ i (block-diagonal causal)."""
    doc = document_ids(lengths, device)
    return (doc[:, None] == doc[None, :]) & causal_mask(len(doc), device)


def topk_chosen(q: Tensor, k: Tensor, block: int, topk: int) -> Tensor:
    """(B, H, T, N) bool: the earlier blocks each query chooses, by einsearch's own rule."""
    from einsearch.primitives.sparse_attention import choose_blocks

    B, H, T, d = k.shape
    done = T // block
    summaries = k[:, :, : done * block].reshape(B, H, done, block, d).mean(3)  # (B, H, N, d)
    return choose_blocks(q, summaries, torch.arange(T, device=q.device) // block, topk)


def topk_mask(chosen: Tensor, block: int) -> Tensor:
    """(B, H, T, T) bool: i sees j iff j's block is chosen by i, or j is in i's block and j ≤ i."""
    T = chosen.shape[2]
    i = torch.arange(T, device=chosen.device)
    key_block = i // block  # a key in the unfinished last block gets index N: never chosen
    in_chosen = F.pad(chosen, (0, 1))[..., key_block]  # (B, H, T, T)
    own = (key_block[None, :] == key_block[:, None]) & (i[None, :] <= i[:, None])  # (T, T)
    return in_chosen | own


# FlexAttention mask_mods: the same predicates written on (batch, head, q_idx, kv_idx) indices.


def causal_mod() -> Callable:
    return lambda b, h, q, kv: kv <= q


def window_mod(window: int) -> Callable:
    return lambda b, h, q, kv: (kv <= q) & (kv > q - window)


def document_mod(lengths: list[int], device: str = "cpu") -> Callable:
    """doc(i) = number of document starts s ≤ i after the first, read from a tensor whose size does
    not depend on T (a captured tensor of size T makes compiled flex fail to build under dynamic T)."""
    starts = torch.tensor(lengths[:-1], device=device).cumsum(0)  # (documents − 1,)

    def doc(i: Tensor) -> Tensor:
        return sum((i >= starts[n]).int() for n in range(len(lengths) - 1))

    return lambda b, h, q, kv: (doc(q) == doc(kv)) & (kv <= q)


def topk_mod(chosen: Tensor, block: int) -> Callable:
    padded = F.pad(chosen, (0, 1))  # (B, H, T, N + 1): a key in the unfinished block reads False
    return lambda b, h, q, kv: padded[b, h, q, kv // block] | ((kv // block == q // block) & (kv <= q))


@dataclass(frozen=True)
class MaskCase:
    """One mask at one length: the dense mask, its mask_mod, the batch/head extent of the mask."""

    name: str
    dense: Tensor  # (T, T) or (B, H, T, T) bool
    mod: Callable
    per_head: bool  # the mask differs per batch element and head (topk_blocks)


def make_case(name: str, q: Tensor, k: Tensor) -> MaskCase:
    T, device = q.shape[2], q.device
    if name == "causal":
        return MaskCase(name, causal_mask(T, device), causal_mod(), False)
    if name == "window":
        return MaskCase(name, window_mask(T, WINDOW, device), window_mod(WINDOW), False)
    if name == "document":
        lengths = document_lengths(T, DOCUMENTS)
        return MaskCase(name, document_mask(lengths, device), document_mod(lengths, device), False)
    if name == "topk_blocks":
        chosen = topk_chosen(q, k, BLOCK, TOPK)
        return MaskCase(name, topk_mask(chosen, BLOCK), topk_mod(chosen, BLOCK), True)
    raise ValueError(f"unknown mask {name!r}")


def flex_block_mask(case: MaskCase, B: int, H: int, T: int):
    from torch.nn.attention.flex_attention import create_block_mask

    b, h = (B, H) if case.per_head else (None, None)
    return create_block_mask(case.mod, b, h, T, T, device=str(case.dense.device))


# ---------------------------------------------------------------------------- measurement


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def peak_mib(fn: Callable[[], object], device: str) -> float:
    """Peak memory growth of one call of fn, MiB (RSS high-water mark on CPU, allocator peak on CUDA)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before, _ = rss_kib()
    fn()
    _, high = rss_kib()
    return (high - before) / 1024


def children_cpu() -> float:
    """CPU seconds of finished child processes (the C++ compiler that inductor runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], object], repeats: int, device: str) -> tuple[float, float]:
    """Median (wall ms, thread-CPU ms) of `repeats` calls after one warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        sync(device)
        w, c = time.perf_counter(), time.thread_time()
        fn()
        sync(device)
        walls.append(1e3 * (time.perf_counter() - w))
        cpus.append(1e3 * (time.thread_time() - c))
    return statistics.median(walls), statistics.median(cpus)


@dataclass(frozen=True)
class Row:
    mask: str
    T: int
    method: str
    pass_: str  # "fwd" or "fwd+bwd"
    wall_ms: float | None
    cpu_ms: float | None
    cpu_ratio: float | None  # CPU time / sdpa_mask's CPU time, same pass (< 1: cheaper than the dense mask)
    wall_ratio: float | None  # the same for wall time
    peak_mib: float | None
    max_abs_diff: float | None
    note: str = ""


def forward_and_backward(attend: Callable, q: Tensor, k: Tensor, v: Tensor, cotangent: Tensor) -> Callable:
    """A closure running attend forward and backward on leaf copies of q, k, v; returns (y, dq)."""

    def run() -> tuple[Tensor, Tensor]:
        ql, kl, vl = (t.detach().requires_grad_(True) for t in (q, k, v))
        y = attend(ql, kl, vl)
        y.backward(cotangent)
        return y.detach(), ql.grad

    return run


def methods_for(case: MaskCase, q: Tensor, k: Tensor, flex: Callable | None, block_mask) -> dict[str, Callable]:
    """name -> attend(q, k, v) for every method that computes this mask."""
    from einsearch.primitives.attention import visible
    from einsearch.primitives.sparse_attention import block_mask as einsearch_block_mask
    from einsearch.primitives.sparse_attention import choose_blocks

    dense = case.dense
    methods: dict[str, Callable] = {
        "sdpa_mask": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=dense),
    }
    if case.name == "causal":
        methods["sdpa_causal"] = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if flex is not None:
        methods["flex"] = lambda q, k, v: flex(q, k, v, block_mask=block_mask)
    if case.name == "window":

        def einsearch_window(q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # SoftmaxAttention.forward
            positions = torch.arange(q.shape[2], device=q.device)
            mask = visible(positions[:, None], positions[None, :], WINDOW, None)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        methods["einsearch"] = einsearch_window
    if case.name == "topk_blocks":

        def einsearch_topk(q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # TopkBlockAttention.forward
            B, H, T, d = k.shape
            positions = torch.arange(T, device=q.device)
            done = T // BLOCK
            summaries = k[:, :, : done * BLOCK].reshape(B, H, done, BLOCK, d).mean(3)
            chosen = choose_blocks(q, summaries, positions // BLOCK, TOPK)
            mask = einsearch_block_mask(chosen, positions, positions, BLOCK)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        methods["einsearch"] = einsearch_topk
    return methods


def module_check(mask: str, B: int, H: int, d: int, T: int, device: str) -> float:
    """max |module(x) − out(sdpa_mask(module's q, k, v))|: the einsearch rows are the module's path."""
    from einsearch.primitives.attention import SoftmaxAttention
    from einsearch.primitives.sparse_attention import TopkBlockAttention

    torch.manual_seed(1)
    D = H * d
    if mask == "window":
        module = SoftmaxAttention(D, H, "none", window=WINDOW).to(device)
    else:
        module = TopkBlockAttention(D, H, block=BLOCK, k=TOPK).to(device)
    x = torch.randn(B, T, D, device=device)
    with torch.no_grad():
        q, k, v = module._heads(x, torch.arange(T, device=device)) if mask == "window" else module._heads(x)
        dense = make_case(mask, q, k).dense
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
        expected = module.out(y.transpose(1, 2).reshape(B, T, D))
        return (module(x) - expected).abs().max().item()


def compiled_flex() -> tuple[dict[str, Callable] | None, str]:
    """Compiled flex_attention: "dynamic" (compiled for the first T, recompiled once with a
    symbolic T, then reused) and "static" (compiled again for every T).  Masks whose mask_mod
    reads a tensor of size T (topk_blocks' choices) need "static": with a symbolic T, inductor's
    CPU flex template fails to build (C++ compile error, torch 2.13)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError as error:
        return None, f"flex_attention unavailable: {error}"
    torch._dynamo.config.recompile_limit = 64  # one compiled entry per (mask, T) for "static"
    return {"dynamic": torch.compile(flex_attention), "static": torch.compile(flex_attention, dynamic=False)}, ""


def measure(args: argparse.Namespace) -> tuple[list[Row], list[dict]]:
    device, B, H, d = args.device, args.batch, args.heads, args.dim
    flexes, flex_skip = compiled_flex() if "flex" in args.methods else (None, "not requested")
    rows: list[Row] = []
    extras: list[dict] = []  # mask build times, compile times, module checks
    for mask in args.masks:
        if mask in ("window", "topk_blocks"):
            diff = module_check(mask, B, H, d, min(args.lengths), device)
            extras.append({"what": "module_check", "mask": mask, "T": min(args.lengths), "max_abs_diff": diff})
            print(f"# einsearch {mask} module(x) vs out(sdpa_mask(q,k,v)) at T={min(args.lengths)}: {diff:.1e}")
        for T in args.lengths:
            torch.manual_seed(0)
            q, k, v, cotangent = (torch.randn(B, H, T, d, device=device) for _ in range(4))
            build_wall = time.perf_counter()
            case = make_case(mask, q, k)
            sync(device)
            build = {"what": "mask_build", "mask": mask, "T": T, "dense_ms": 1e3 * (time.perf_counter() - build_wall)}
            block_mask, note = None, flex_skip
            flex_here = None if flexes is None else flexes["static" if case.per_head else "dynamic"]
            if flex_here is not None:
                try:
                    w = time.perf_counter()
                    block_mask = flex_block_mask(case, B, H, T)
                    sync(device)
                    build["block_mask_ms"] = 1e3 * (time.perf_counter() - w)
                    build["block_density"] = round(1 - block_mask.sparsity() / 100, 4)  # share of blocks computed
                except Exception as error:  # noqa: BLE001 - report why and go on
                    flex_here, note = None, f"create_block_mask failed: {type(error).__name__}: {error}"[:200]
            extras.append(build)
            methods = methods_for(case, q, k, flex_here, block_mask)
            if "flex" in methods:
                try:
                    w, c, gcc = time.perf_counter(), time.thread_time(), children_cpu()
                    with torch.no_grad():
                        methods["flex"](q, k, v)
                    sync(device)
                    extras.append({"what": "flex_compile", "mask": mask, "T": T,
                                   "compiled": "static" if case.per_head else "dynamic",
                                   "wall_s": time.perf_counter() - w, "cpu_s": time.thread_time() - c,
                                   "compiler_cpu_s": children_cpu() - gcc})
                except Exception as error:  # noqa: BLE001
                    note = f"flex failed: {type(error).__name__}: {error}"[:200]
                    del methods["flex"]
            methods = {name: fn for name, fn in methods.items() if name == "sdpa_mask" or name in args.methods}
            rows += measure_case(case, T, methods, q, k, v, cotangent, args, note)
            print_rows([r for r in rows if r.mask == mask and r.T == T])
            sys.stdout.flush()
    return rows, extras


def measure_case(case: MaskCase, T: int, methods: dict[str, Callable], q: Tensor, k: Tensor, v: Tensor,
                 cotangent: Tensor, args: argparse.Namespace, flex_note: str) -> list[Row]:
    device, rows = args.device, []
    with torch.no_grad():
        reference = methods["sdpa_mask"](q, k, v)
    reference_grad = forward_and_backward(methods["sdpa_mask"], q, k, v, cotangent)()[1]
    base: dict[str, float] = {}
    for pass_ in ("fwd", "fwd+bwd"):
        for name, attend in methods.items():
            if pass_ == "fwd":

                def call(attend: Callable = attend) -> Tensor:
                    with torch.no_grad():
                        return attend(q, k, v)

                diff = (call() - reference).abs().max().item()
            else:
                if name == "flex" and device == "cpu":
                    rows.append(Row(case.name, T, name, pass_, None, None, None, None, None, None,
                                    "no FlexAttention backward on CPU in torch " + torch.__version__))
                    continue
                call = forward_and_backward(attend, q, k, v, cotangent)
                y, dq = call()
                diff = max((y - reference).abs().max().item(), (dq - reference_grad).abs().max().item())
            wall, cpu = timed(call, args.repeats, device)
            peak = peak_mib(call, device)
            if name == "sdpa_mask":
                base[pass_] = (cpu, wall)
            base_cpu, base_wall = base[pass_]
            rows.append(Row(case.name, T, name, pass_, wall, cpu, cpu / base_cpu, wall / base_wall, peak, diff,
                            flex_note if name == "flex" else ""))
    if "flex" not in methods and flex_note and "flex" in args.methods:
        rows.append(Row(case.name, T, "flex", "fwd", None, None, None, None, None, None, flex_note))
    return rows


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_rows(rows: list[Row]) -> None:
    for r in rows:
        print(f"{r.mask:<12} {r.T:>5} {r.method:<12} {r.pass_:<8} {fmt(r.wall_ms, '10.2f')} {fmt(r.cpu_ms, '10.2f')} "
              f"{fmt(r.cpu_ratio, '7.2f')} {fmt(r.wall_ratio, '7.2f')} {fmt(r.peak_mib, '9.1f')} "
              f"{fmt(r.max_abs_diff, '10.1e')}  {r.note}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="256,512,1024,2048,4096", help="comma-separated sequence lengths T")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64, help="head dimension d")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per method after one warm-up (median)")
    p.add_argument("--masks", default="causal,window,topk_blocks,document")
    p.add_argument("--methods", default="sdpa_causal,flex,einsearch", help="besides sdpa_mask, always run")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", default=None, help="write rows and extras to this JSON file")
    args = p.parse_args(argv)
    args.lengths = [int(t) for t in args.lengths.split(",")]
    args.masks = args.masks.split(",")
    args.methods = args.methods.split(",")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if min(args.lengths) < 2 * BLOCK:
        p.error(f"--lengths: every T must be at least {2 * BLOCK}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(1)
    print(f"# torch {torch.__version__}, {platform.machine()} {platform.processor() or ''}, device {args.device}, "
          f"threads {torch.get_num_threads()}, B={args.batch} H={args.heads} d={args.dim}, W={WINDOW}, "
          f"topk block={BLOCK} k={TOPK}, documents={DOCUMENTS}, repeats={args.repeats} (median after 1 warm-up)")
    print("# cpu_x, wall_x = CPU time, wall time / sdpa_mask's of the same pass; "
          "peak = RSS high-water growth (MiB) during one call; diff = max |out - sdpa_mask out| (fwd+bwd: and dq)")
    print(f"{'mask':<12} {'T':>5} {'method':<12} {'pass':<8} {'wall_ms':>10} {'cpu_ms':>10} {'cpu_x':>7} {'wall_x':>7} "
          f"{'peak_MiB':>9} {'max_diff':>10}")
    rows, extras = measure(args)
    print("# mask construction (not in the per-call times above, except the einsearch rows which rebuild theirs):")
    for e in extras:
        if e["what"] == "mask_build":
            print(f"#   {e['mask']:<12} T={e['T']:>5} dense {e['dense_ms']:.2f} ms, BlockMask "
                  f"{fmt(e.get('block_mask_ms'), '.2f')} ms, share of tiles computed {fmt(e.get('block_density'), '.3f')}")
        elif e["what"] == "flex_compile":
            print(f"#   flex compile ({e['compiled']}) + first call {e['mask']:<12} T={e['T']:>5}: "
                  f"{e['wall_s']:.1f} s wall, {e['cpu_s']:.1f} s CPU of this thread + "
                  f"{e['compiler_cpu_s']:.1f} s of the C++ compiler")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "args": {k: v for k, v in vars(args).items() if k != "json"},
                       "rows": [asdict(r) for r in rows], "extras": extras}, f, indent=1)


if __name__ == "__main__":
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:  # see "Memory" above: re-run with it set
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD, "TORCHINDUCTOR_COMPILE_THREADS": "1"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    main()
