"""Benchmark the KPConvX layer and segmentation network.

1. Layer forward+backward throughput (points/s) for R points, k in {16, 32},
   D in {64, 128, 256} (1 block, DH = 4 D, groups 8, shells (1, 7, 13)), with a dense
   ``torch.nn.Linear(D, D)`` forward+backward on the same points as the yardstick
   (ratio = layer time / linear time).
2. ``--vs-direct``: one block forward+backward at R = 50k, k in {16, 32}, D in {64, 128}
   against a direct gather implementation of the same formula written here (dense
   ``[R, k, m_q]`` distances, ``[R, k, D]`` gathered features, attention rows and weights,
   plain autograd, the same parameters and MLPs), each in its own child process (time:
   median of ``--repeat``; memory: the child's peak RSS above its RSS once inputs are built).
   Outputs and input gradients are checked equal first (issue 15 target: ours <= 0.3x its time
   and <= 0.3x its peak).
3. Network forward (eval, no grad) and training step (forward+backward) on N points of a
   synthetic room scene, hierarchy build timed separately (on CPU also with the torch grid
   search, the GPU path, as the baseline of the cKDTree path used there); peak memory from
   ``torch.cuda.max_memory_allocated`` (CUDA) or the process's peak RSS (CPU, VmHWM
   reset through /proc/self/clear_refs).

Usage: python benchmarks/bench_kpconvx.py [--device cpu|cuda] [--points N]
       [--layer-points R] [--repeat K] [--preset small|full] [--amp]
       python benchmarks/bench_kpconvx.py --vs-direct [--direct-points 50000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kpconvx import KPConvXConfig, KPConvXLayer, KPConvXSegNet, build_hierarchy  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timeit(fn, dev: torch.device, repeat: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    _sync(dev)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def _rss_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _rss_peak_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _mem_reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        _rss_reset()


def _mem_peak_mb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2 ** 20
    return _rss_peak_mb()


def room_scene(n: int, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    """Synthetic indoor-like scene [n, 3]: floor, 4 walls and a few boxes; side ~ 10 m at 100k
    points (about 1-2 points per 4 cm cell on surfaces)."""
    g = torch.Generator().manual_seed(seed)
    L = 10.0 * math.sqrt(n / 1e5) / 2.0
    h = 3.0
    parts = torch.multinomial(torch.tensor([L * L, L * h, L * h, L * h, L * h, L * L * 0.4]),
                              n, replacement=True, generator=g)
    u = torch.rand(n, 3, generator=g)
    p = torch.empty(n, 3)
    p[:, 0], p[:, 1], p[:, 2] = u[:, 0] * L, u[:, 1] * L, 0.0                     # floor
    for w, (axis, val) in enumerate([(0, 0.0), (0, L), (1, 0.0), (1, L)], start=1):
        m = parts == w
        p[m, axis] = val
        p[m, 1 - axis] = u[m, 0] * L
        p[m, 2] = u[m, 1] * h
    m = parts == 5  # box tops at random heights
    p[m, 0], p[m, 1] = u[m, 0] * L, u[m, 1] * L
    p[m, 2] = 0.5 + (torch.floor(u[m, 0] * 4) + torch.floor(u[m, 1] * 4)) % 3 * 0.4
    p += 0.005 * torch.randn(n, 3, generator=g)
    return p.to(device)


def bench_block(D: int) -> KPConvXLayer:
    """The benchmarked layer: one block, DH = 4D, groups 8, shells (1, 7, 13) scaled to the room."""
    return KPConvXLayer(D, blocks=1, sigma=0.04, shell_radii=(0.0, 0.05, 0.1), DH=4 * D, groups=8)


def bench_layer(dev: torch.device, R: int, repeat: int, amp: bool) -> None:
    from geometry.neighbors import knn
    print(f"\n## KPConvX layer fwd+bwd, R = {R} points, 1 block, DH = 4D, groups 8, "
          f"m_q = 21, device {dev}{', autocast bf16' if amp else ''}")
    print(f"{'k':>3} {'D':>4} | {'layer ms':>9} {'layer pts/s':>12} | {'linear ms':>9} "
          f"{'linear pts/s':>12} | {'ratio':>6}")
    X = room_scene(R, device=str(dev))
    for k in (16, 32):
        _, N = knn(X, X, k)
        for D in (64, 128, 256):
            torch.manual_seed(0)
            layer = bench_block(D).to(dev).train()
            layer.validate_indices = False
            lin = torch.nn.Linear(D, D).to(dev)
            F = torch.randn(R, D, device=dev, requires_grad=True)

            def run_layer():
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    out = layer(X, F, N)
                out.float().sum().backward()

            def run_lin():
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    out = lin(F)
                out.float().sum().backward()

            tl = _timeit(run_layer, dev, repeat)
            tr = _timeit(run_lin, dev, repeat)
            print(f"{k:>3} {D:>4} | {tl * 1e3:9.1f} {R / tl:12.3g} | {tr * 1e3:9.2f} "
                  f"{R / tr:12.3g} | {tl / tr:6.0f}x")
            del layer, lin, F


def direct_layer(layer: KPConvXLayer, X: torch.Tensor, F: torch.Tensor, N: torch.Tensor) -> torch.Tensor:
    """The layer's formula as direct dense gathers (the yardstick of ``--vs-direct``)::

        d_ij = x_j - x_i;  k_ij = argmin_q ||d_ij - q||;  h_ij = max(0, 1 - ||d_ij - q_kij|| / sigma)
        conv_i = sum_j h_ij (A_i[k_ij] ⋈ W[k_ij]) * f_j,  then the block's two MLPs + residual

    with ``[R, k, m_q]`` and ``[R, k, D]`` tensors and plain autograd (no chunks, no custom
    backward). Packed ``X [R, 3]``, ``F [R, D]``, ``N [R, k]`` (index R: no neighbour)."""
    R, k = N.shape
    Q = layer.kernel_points
    Xp = torch.cat([X, X.new_zeros((1, 3))])
    valid = N < R
    d = Xp[N] - X.unsqueeze(1)                                               # [R, k, 3]
    dq = ((d.unsqueeze(2) - Q) ** 2).sum(-1)                                 # [R, k, m_q]
    kk = dq.argmin(-1)
    dist = torch.linalg.vector_norm(d - Q[kk], dim=-1)
    h = torch.clamp(1.0 - dist / layer.sigma, min=0.0) * valid
    out = F
    for blk in layer.kp_blocks:
        D, G = blk.in_dim, blk.groups
        A = blk.attention(out)                                               # [R, m_q, D/G]
        Fj = torch.cat([out, out.new_zeros((1, D))])[N]                      # [R, k, D]
        Ag = A[torch.arange(R, device=N.device).unsqueeze(1), kk]            # [R, k, D/G]
        P = (blk.W[kk].view(R, k, D // G, G) * Ag.unsqueeze(-1)).view(R, k, D)
        conv = (h.unsqueeze(-1) * P * Fj).sum(1)
        H = blk.act(blk.bn_expand(blk.expand(conv)))
        H = blk.act(blk.bn_contract(blk.contract(H)))
        out = out + H
    return out


def _direct_child(impl: str, R: int, k: int, D: int, repeat: int) -> None:
    """One measurement in this (child) process: prints ``seconds peak_mb``."""
    from geometry.neighbors import knn
    torch.manual_seed(0)
    X = room_scene(R)
    _, N = knn(X, X, k)
    layer = bench_block(D).train()
    layer.validate_indices = False
    F = torch.randn(R, D, requires_grad=True)
    fwd = (lambda: layer(X, F, N)) if impl == "ours" else (lambda: direct_layer(layer, X, F, N))
    _rss_reset()
    base_now = _rss_peak_mb()

    def run():
        fwd().sum().backward()
        F.grad = None
        layer.zero_grad(set_to_none=True)

    t = _timeit(run, torch.device("cpu"), repeat)
    peak = _rss_peak_mb() - base_now
    print(f"{t:.6f} {peak:.1f}")


def bench_vs_direct(R: int, repeat: int) -> None:
    """Ours against :func:`direct_layer`, each shape in child processes (time and memory)."""
    import subprocess

    # equal outputs and gradients first (small R, same process)
    from geometry.neighbors import knn
    torch.manual_seed(0)
    X = room_scene(3000)
    for k, D in ((16, 64), (32, 128)):
        _, N = knn(X, X, k)
        layer = bench_block(D).eval()
        F1 = torch.randn(len(X), D, requires_grad=True)
        F2 = F1.detach().clone().requires_grad_(True)
        a, b = layer(X, F1, N), direct_layer(layer, X, F2, N)
        (a * torch.linspace(-1, 1, a.numel()).view_as(a)).sum().backward()
        (b * torch.linspace(-1, 1, b.numel()).view_as(b)).sum().backward()
        err = max(float((a - b).detach().abs().max()), float((F1.grad - F2.grad).abs().max()))
        assert err < 1e-4, f"ours and the direct gathers disagree by {err:.2e} at k={k}, D={D}"
    print(f"\n## One KPConvX block fwd+bwd vs direct gathers, R = {R}, CPU, threads {torch.get_num_threads()}, "
          f"median of {repeat}; outputs and input gradients agree (checked at R = 3000)")
    print("| k | D | ours s | direct s | time ours/direct | ours peak MB | direct peak MB | memory ours/direct |")
    print("|---|---|---|---|---|---|---|---|")
    for k in (16, 32):
        for D in (64, 128):
            res = {}
            for impl in ("ours", "direct"):
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--direct-child", impl,
                                      str(R), str(k), str(D), str(repeat)], capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{impl} k={k} D={D}: {out.stderr[-2000:]}")
                res[impl] = [float(v) for v in out.stdout.split()[-2:]]
            (to, mo), (td, md) = res["ours"], res["direct"]
            print(f"| {k} | {D} | {to:.3f} | {td:.3f} | {to / td:.2f} | {mo:.0f} | {md:.0f} | {mo / md:.2f} |")


def bench_network(dev: torch.device, n: int, repeat: int, preset: str, amp: bool) -> None:
    cfg = KPConvXConfig.full() if preset == "full" else KPConvXConfig.small()
    torch.manual_seed(0)
    pts = room_scene(n, device=str(dev))
    batch = torch.zeros(n, dtype=torch.long, device=dev)
    feats = torch.cat([torch.ones(n, 1, device=dev), pts[:, 2:3]], 1)
    net = KPConvXSegNet(2, 13, cfg).to(dev)
    nparam = sum(p.numel() for p in net.parameters())
    print(f"\n## KPConvXSegNet '{preset}' ({nparam / 1e6:.2f} M params), N = {n} points, "
          f"device {dev}{', autocast bf16' if amp else ''}")
    _mem_reset(dev)
    th = _timeit(lambda: build_hierarchy(pts, batch, cfg), dev, repeat)
    H = build_hierarchy(pts, batch, cfg)
    mh = _mem_peak_mb(dev)
    sizes = [p.shape[0] for p in H.points]
    mean_nb = [round(float((nb < p.shape[0]).sum(1).float().mean()), 1)
               for nb, p in zip(H.neighbors, H.points)]
    print(f"stage points {sizes}, mean neighbours {mean_nb}")
    if dev.type == "cpu":  # baseline: the torch grid search (the GPU path) on the CPU
        import geometry.neighbors as nbmod
        nbmod.TORCH_CPU_GRID = True
        try:
            tg = _timeit(lambda: build_hierarchy(pts, batch, cfg), dev, repeat)
        finally:
            nbmod.TORCH_CPU_GRID = False
        print(f"hierarchy build: cKDTree {th * 1e3:.0f} ms, torch grid search {tg * 1e3:.0f} ms "
              f"(cKDTree {tg / th:.1f}x faster)")

    net.eval()

    def fwd():
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            net(pts, feats, batch, hierarchy=H)

    _mem_reset(dev)
    tf = _timeit(fwd, dev, repeat)
    mf = _mem_peak_mb(dev)

    net.train()
    labels = torch.randint(0, 13, (n,), device=dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(pts, feats, batch, hierarchy=H)
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()

    _mem_reset(dev)
    tt = _timeit(step, dev, repeat)
    mt = _mem_peak_mb(dev)
    what = "peak CUDA alloc" if dev.type == "cuda" else "peak RSS"
    print(f"{'phase':<28} {'ms':>9} {'pts/s':>10} {what + ' MB':>18}")
    print(f"{'hierarchy build':<28} {th * 1e3:9.1f} {n / th:10.3g} {mh:18.0f}")
    print(f"{'forward (eval, no grad)':<28} {tf * 1e3:9.1f} {n / tf:10.3g} {mf:18.0f}")
    print(f"{'train step (fwd+bwd)':<28} {tt * 1e3:9.1f} {n / tt:10.3g} {mt:18.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--points", type=int, default=None,
                    help="network points N (default 1M on CUDA, 100k on CPU)")
    ap.add_argument("--layer-points", type=int, default=100_000, help="layer points R")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--preset", choices=["small", "full"], default=None,
                    help="network preset (default full on CUDA, small on CPU)")
    ap.add_argument("--amp", action="store_true", help="torch.autocast bf16")
    ap.add_argument("--skip-layer", action="store_true")
    ap.add_argument("--skip-network", action="store_true")
    ap.add_argument("--vs-direct", action="store_true", help="only: one block vs direct gathers (child processes)")
    ap.add_argument("--direct-points", type=int, default=50_000, help="R for --vs-direct")
    ap.add_argument("--direct-child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="2,000 layer points, 5,000 network points, one run (CI)")
    args = ap.parse_args()
    if args.direct_child:
        impl, R, k, D, rep = args.direct_child
        _direct_child(impl, int(R), int(k), int(D), int(rep))
        return
    if args.vs_direct:
        bench_vs_direct(2000 if args.quick else args.direct_points, 1 if args.quick else args.repeat)
        return
    if args.quick:
        args.layer_points, args.points, args.repeat = 2000, 5000, 1
    dev = torch.device(args.device)
    n = args.points or (1_000_000 if dev.type == "cuda" else 100_000)
    preset = args.preset or ("full" if dev.type == "cuda" else "small")
    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}")
    if not args.skip_layer:
        bench_layer(dev, args.layer_points, args.repeat, args.amp)
    if not args.skip_network:
        bench_network(dev, n, args.repeat, preset, args.amp)


if __name__ == "__main__":
    main()
