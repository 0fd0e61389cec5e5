"""KPConvX layer forward+backward on a shared CPU: idle vs beside a busy process.

    .venv/bin/python benchmarks/bench_contention.py [--points 50000] [--k 32] [--dim 128] [--repeat 5]

Each setting runs in a fresh child process (OpenMP reads its environment once): torch threads
1 or 2 (``torch.set_num_threads``) x OpenMP wait policy ``ACTIVE`` (spinning threads: GNU
OpenMP's default) or ``PASSIVE`` (threads sleep between parallel regions), once alone and
once beside a pure-Python busy loop holding one core. Prints the median time of one
forward+backward of one KPConvX block (m_q = 21, DH = 4D, groups 8) and the contended/idle
ratio (goal: <= 1.2).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads({threads})
sys.path.insert(0, {bench!r})
from bench_kpconvx import room_scene
from geometry.neighbors import knn
from kpconvx import KPConvXLayer
torch.manual_seed(0)
X = room_scene({points})
_, N = knn(X, X, {k})
layer = KPConvXLayer({dim}, blocks=1, sigma=0.04, shell_radii=(0.0, 0.05, 0.1), DH=4 * {dim}, groups=8).train()
layer.validate_indices = False
F = torch.randn({points}, {dim}, requires_grad=True)
def step():
    layer(X, F, N).sum().backward()
if {auto}:
    from pipeline.cpu_share import ThreadGovernor
    gov = ThreadGovernor(max_threads=2, interval=0.0)
    time.sleep(1.0)
    gov.update(force=True)
step()
times = []
for _ in range({repeat}):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
print(json.dumps([sorted(times)[len(times) // 2], torch.get_num_threads()]))
"""


def run(threads: int, policy: str, busy: bool, args, auto: bool = False) -> tuple[float, int]:
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "OMP_NUM_THREADS": str(threads)}
    code = CHILD.format(root=ROOT, bench=os.path.join(ROOT, "benchmarks"), threads=threads,
                        points=args.points, k=args.k, dim=args.dim, repeat=args.repeat, auto=auto)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(0.5 if busy else 0.0)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    seconds, used = json.loads(out.stdout.strip().splitlines()[-1])
    return float(seconds), int(used)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--points", type=int, default=50_000)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2,000 points, k 8, D 16, one run (CI)")
    args = ap.parse_args()
    if args.quick:
        args.points, args.k, args.dim, args.repeat = 2000, 8, 16, 1
    print(f"KPConvX block fwd+bwd, R = {args.points}, k = {args.k}, D = {args.dim}; {os.cpu_count()} cores; "
          f"median of {args.repeat}; busy = a Python busy loop on one core")
    print("| torch threads | OMP_WAIT_POLICY | idle s | beside a busy process s | busy / idle |")
    print("|---|---|---|---|---|")
    for threads in (1, 2):
        for policy in ("ACTIVE", "PASSIVE"):
            (idle, _), (busy, _) = run(threads, policy, False, args), run(threads, policy, True, args)
            print(f"| {threads} | {policy} | {idle:.2f} | {busy:.2f} | {busy / idle:.2f} |", flush=True)
    for policy in ("ACTIVE", "PASSIVE"):   # pipeline.cpu_share.ThreadGovernor picks the count
        (idle, ti), (busy, tb) = run(2, policy, False, args, True), run(2, policy, True, args, True)
        print(f"| governor: {ti} idle, {tb} busy | {policy} | {idle:.2f} | {busy:.2f} | {busy / idle:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
