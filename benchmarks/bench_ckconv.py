"""Benchmark CKConvND (2-D, channels-last, fp32) beside NVIDIA nvSubquadratic's CKConvND (the anchor).

Setting (the anchor's): ``CKConvND(2, C, SIRENKernelND(3 layers, hidden 32, embedding 32),
ExponentialModulationND window, zero padding, double grid)``, input ``[B, H, W, C]`` fp32.

Measured in the same run, per shape (median of ``--repeat`` timed runs after warm-up; CUDA
events on GPU, perf_counter on CPU):

* ``copy``: ``x.clone()`` - a memory-bandwidth floor;
* ``naive``: same kernel network, no cache, permute to channels-first, power-of-two FFT size
  >= S + K - 1 (the full linear convolution), complex ``fftn``/``ifftn``;
* ``ours fwd``: CKConvND forward with the kernel regenerated (cache off, no grad);
* ``ours cached``: CKConvND inference forward (eval, no grad; cached kernel spectrum);
* ``f+b``: forward + backward (grads for x and all parameters);
* ``anchor``: nvSubquadratic 0.2.0's ``CKConvND`` built with the same settings, our layer's
  weights copied from it (its ``kernel.positional_embedding.linear`` is our ``kernel.pos_embed``),
  its window weights frozen as our contract freezes them; forward (no grad) and forward +
  backward, timed in the same process, and its output compared with ours (max relative
  difference). Where nvsubquadratic is not installed a line says so and the anchor columns
  are empty. Install it without its dependencies (its metadata asks for torch 2.14 and
  pulls a CUDA build; the module itself runs with this project's torch)::

      .venv/bin/pip install --no-deps nvsubquadratic==0.2.0 einops omegaconf

Correctness: at every shape our output is compared, at ``--check-points`` random output cells
(all channels, sample 0), with the direct sum ``y[n] = sum_m k[m] x[n - m] + s x[n]`` in
float64.

Usage::

    python benchmarks/bench_ckconv.py --device cpu --shapes small --repeat 5
    python benchmarks/bench_ckconv.py --device cuda --shapes anchor --repeat 20
    python benchmarks/bench_ckconv.py --quick          # CI: one tiny shape, one run
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ckconv import CKConvND  # noqa: E402

SHAPES = {
    "anchor": [(8, 128, 128, 64), (8, 256, 256, 64), (4, 512, 512, 64), (1, 1024, 1024, 64)],
    "small": [(2, 64, 64, 64), (1, 128, 128, 64), (1, 256, 256, 32), (1, 512, 512, 32)],
    "quick": [(1, 32, 32, 16)],
}
# NVIDIA nvSubquadratic 0.2.0, one H100 80GB, fp32 channels-last (ms)
ANCHOR_FWD = {(8, 128, 128, 64): 1.58, (8, 256, 256, 64): 6.6, (4, 512, 512, 64): 21.6, (1, 1024, 1024, 64): 39.5}
ANCHOR_FB = {(8, 128, 128, 64): 5.5, (8, 256, 256, 64): 17.1, (4, 512, 512, 64): 48.7, (1, 1024, 1024, 64): 105.0}


def build_layer(shape: tuple[int, int, int, int], device: torch.device) -> CKConvND:
    """The anchor's layer for input ``[B, H, W, C]``; ``L_cache`` = the input size."""
    _, H, W, C = shape
    kernel_cfg = dict(
        type="SIRENKernelND", mlp_hidden_dim=32, num_layers=3, embedding_dim=32,
        omega_0=10.0, L_cache=(H, W), use_bias=True,
    )
    mask_cfg = dict(type="ExponentialModulationND")
    return CKConvND(2, C, kernel_cfg, mask_cfg=mask_cfg).to(device)


def build_anchor(shape: tuple[int, int, int, int], device: torch.device, ours: CKConvND):
    """nvSubquadratic's CKConvND with the same settings, ``ours`` loaded with its weights, its
    window frozen; None when nvsubquadratic is not installed."""
    try:
        from nvsubquadratic.lazy_config import LazyConfig
        from nvsubquadratic.modules.ckconv_nd import CKConvND as AnchorCKConvND
        from nvsubquadratic.modules.kernels_nd import SIRENKernelND
        from nvsubquadratic.modules.masks_nd import ExponentialModulationND
    except ImportError:
        return None
    _, H, W, C = shape
    kernel_cfg = LazyConfig(SIRENKernelND)(out_dim=C, data_dim=2, mlp_hidden_dim=32, num_layers=3,
                                          embedding_dim=32, omega_0=10.0, L_cache=(H, W), use_bias=True)
    mask_cfg = LazyConfig(ExponentialModulationND)(data_dim=2, num_channels=C)
    anchor = AnchorCKConvND(2, C, kernel_cfg, mask_cfg, grid_type="double", fft_padding="zero").to(device)
    anchor.mask.weight.requires_grad_(False)
    state = {k.replace("kernel.positional_embedding.linear.", "kernel.pos_embed."): v
             for k, v in anchor.state_dict().items()}
    ours.load_state_dict(state)
    return anchor


def naive_forward(conv: CKConvND, x: torch.Tensor) -> torch.Tensor:
    """Textbook FFT conv: no cache, channels-first copy, pow2 size >= S+K-1, complex fftn."""
    spatial = tuple(x.shape[1:-1])
    k, _ = conv.masked_kernel(spatial)  # [1, 2H-1, 2W-1, C]
    xf = x.permute(0, 3, 1, 2).contiguous()
    kf = k.permute(0, 3, 1, 2).contiguous()
    sizes = [2 ** math.ceil(math.log2(s + K - 1)) for s, K in zip(spatial, kf.shape[2:])]
    X = torch.fft.fftn(xf, s=sizes, dim=(2, 3))
    Kf = torch.fft.fftn(kf, s=sizes, dim=(2, 3))
    y = torch.fft.ifftn(X * Kf, dim=(2, 3)).real
    r = [(K - 1) // 2 for K in kf.shape[2:]]
    y = y[:, :, r[0] : r[0] + spatial[0], r[1] : r[1] + spatial[1]]
    y = y + conv.shortcut.view(1, -1, 1, 1) * xf
    return y.permute(0, 2, 3, 1).contiguous()


def timeit(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int) -> float:
    """Median wall time of ``fn`` in ms (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def safe_time(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int) -> float:
    """Like :func:`timeit`, NaN when the device runs out of memory."""
    try:
        return timeit(fn, device, repeat, warmup)
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return float("nan")


def check_points(conv: CKConvND, x: torch.Tensor, y: torch.Tensor, points: int) -> float:
    """max |y - ref| / max |ref| at random cells of sample 0 (direct sum in float64)."""
    _, H, W, _ = x.shape
    with torch.no_grad():
        k, _ = conv.masked_kernel((H, W))
        kflip = k[0].double().flip(0, 1)  # kflip[i] = k[2S-2-i]
        x0 = x[0].double()
        s = conv.shortcut.double()
        gen = torch.Generator().manual_seed(0)
        n0 = torch.randint(0, H, (points,), generator=gen).tolist()
        n1 = torch.randint(0, W, (points,), generator=gen).tolist()
        n0[0], n1[0] = 0, W - 1  # include corners
        num, den = 0.0, 0.0
        for a, b in zip(n0, n1):
            # y[n] = sum_j x[j] k[n - j + S - 1] = sum_j x[j] kflip[S - 1 - n + j]
            window = kflip[H - 1 - a : 2 * H - 1 - a, W - 1 - b : 2 * W - 1 - b]
            ref = (x0 * window).sum(dim=(0, 1)) + s * x0[a, b]
            num = max(num, float((y[0, a, b].double() - ref).abs().max()))
            den = max(den, float(ref.abs().max()))
    return num / den


def fmt(v: float, width: int = 9, prec: int = 2) -> str:
    return f"{'-':>{width}}" if v is None or math.isnan(v) else f"{v:>{width}.{prec}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", choices=sorted(SHAPES), default=None,
                        help="default: anchor on CUDA, small on CPU")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs (default 20 GPU / 5 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs (default 5 GPU / 2 CPU)")
    parser.add_argument("--check-points", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="one tiny shape, one run (CI)")
    args = parser.parse_args()
    if args.quick:
        args.shapes, args.repeat, args.warmup = "quick", 1, 0

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    shapes = SHAPES[args.shapes or ("anchor" if cuda else "small")]
    repeat = args.repeat or (20 if cuda else 5)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    name = torch.cuda.get_device_name(device) if cuda else f"cpu, {torch.get_num_threads()} threads"
    print(f"# CKConvND 2-D fp32 channels-last, SIREN 3x32 + exp window; {name}; torch {torch.__version__}")
    print(f"# median of {repeat} runs after {warmup} warm-up; times in ms; TF32 matmul="
          f"{torch.backends.cuda.matmul.allow_tf32 if cuda else 'n/a'}")

    rows = []
    for shape in shapes:
        torch.manual_seed(0)
        conv = build_layer(shape, device)
        anchor = build_anchor(shape, device, conv)
        if anchor is None and not rows:
            print("# nvsubquadratic is not installed: no anchor columns "
                  "(pip install --no-deps nvsubquadratic==0.2.0 einops omegaconf)")
        x = torch.randn(shape, device=device)
        g = torch.randn(shape, device=device)
        xg = x.clone().requires_grad_(True)

        def ours_fwd() -> torch.Tensor:
            conv.cache_enabled = False
            with torch.no_grad():
                return conv(x)

        def ours_cached() -> torch.Tensor:
            conv.cache_enabled = True
            conv.eval()
            with torch.no_grad():
                y = conv(x)
            conv.train()
            return y

        def ours_fb() -> None:
            conv.zero_grad(set_to_none=True)
            xg.grad = None
            conv(xg).backward(g)

        def naive_fwd() -> torch.Tensor:
            with torch.no_grad():
                return naive_forward(conv, x)

        def naive_fb() -> None:
            conv.zero_grad(set_to_none=True)
            xg.grad = None
            naive_forward(conv, xg).backward(g)

        row = {"shape": shape}
        row["copy"] = safe_time(lambda: x.clone(), device, repeat, warmup)
        row["naive_fwd"] = safe_time(naive_fwd, device, repeat, warmup)
        row["ours_fwd"] = safe_time(ours_fwd, device, repeat, warmup)
        row["ours_cached"] = safe_time(ours_cached, device, repeat, warmup)
        row["naive_fb"] = safe_time(naive_fb, device, repeat, warmup)
        row["ours_fb"] = safe_time(ours_fb, device, repeat, warmup)
        row["anchor_fwd"] = row["anchor_fb"] = row["anchor_diff"] = float("nan")
        if anchor is not None:
            def anchor_fwd() -> torch.Tensor:
                with torch.no_grad():
                    return anchor(x)

            def anchor_fb() -> None:
                anchor.zero_grad(set_to_none=True)
                xg.grad = None
                anchor(xg).backward(g)

            row["anchor_fwd"] = safe_time(anchor_fwd, device, repeat, warmup)
            row["anchor_fb"] = safe_time(anchor_fb, device, repeat, warmup)
            ya = anchor_fwd()
            row["anchor_diff"] = float((ours_fwd() - ya).abs().max() / ya.abs().max())
        row["err"] = check_points(conv, x, ours_fwd(), args.check_points)
        row["err_cached"] = check_points(conv, x, ours_cached(), args.check_points)
        rows.append(row)
        del conv, anchor, x, g, xg
        if cuda:
            torch.cuda.empty_cache()

    print()
    print("| shape [B,H,W,C] | copy | naive fwd | ours fwd | ours cached | naive f+b | ours f+b | max rel err (fwd / cached) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ok = "ok" if max(r["err"], r["err_cached"]) < 1e-4 else "FAIL"
        print(f"| {list(r['shape'])} |{fmt(r['copy'], 7, 3)} |{fmt(r['naive_fwd'])} |{fmt(r['ours_fwd'])} |"
              f"{fmt(r['ours_cached'])} |{fmt(r['naive_fb'])} |{fmt(r['ours_fb'])} |"
              f" {r['err']:.1e} / {r['err_cached']:.1e} {ok} |")

    def ratio(a: float, b: float | None) -> float:
        return float("nan") if b is None or math.isnan(a) or math.isnan(b) else a / b

    print()
    print("| shape [B,H,W,C] | anchor fwd | ours fwd | fwd/anchor | cached/anchor | anchor f+b | ours f+b | f+b/anchor | max rel diff vs anchor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {list(r['shape'])} |{fmt(r['anchor_fwd'])} |{fmt(r['ours_fwd'])} |"
              f"{fmt(ratio(r['ours_fwd'], r['anchor_fwd']))} |{fmt(ratio(r['ours_cached'], r['anchor_fwd']))} |"
              f"{fmt(r['anchor_fb'])} |{fmt(r['ours_fb'])} |{fmt(ratio(r['ours_fb'], r['anchor_fb']))} |"
              f" {r['anchor_diff']:.1e} |")
    print()
    print("| shape [B,H,W,C] | fwd/naive | cached/naive | f+b/naive | fwd/copy | H100 anchor fwd (published) | H100 anchor f+b |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {list(r['shape'])} |{fmt(ratio(r['ours_fwd'], r['naive_fwd']))} |"
              f"{fmt(ratio(r['ours_cached'], r['naive_fwd']))} |{fmt(ratio(r['ours_fb'], r['naive_fb']))} |"
              f"{fmt(ratio(r['ours_fwd'], r['copy']), 9, 1)} |{fmt(ANCHOR_FWD.get(r['shape']))} |"
              f"{fmt(ANCHOR_FB.get(r['shape']))} |")
    bad = [r for r in rows if not max(r["err"], r["err_cached"]) < 1e-4
           or (not math.isnan(r["anchor_diff"]) and not r["anchor_diff"] < 1e-4)]
    if bad:
        raise SystemExit(f"correctness check failed for {[list(r['shape']) for r in bad]}")


if __name__ == "__main__":
    main()
