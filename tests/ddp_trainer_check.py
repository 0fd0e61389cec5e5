"""Run under torchrun by tests/test_distributed.py: a tiny Trainer run in which every rank
draws its own batches; writes every rank's final weights (rank 0) to WORK/weights.json.

    torchrun --nproc_per_node 2 tests/ddp_trainer_check.py WORK   # DDP
    python tests/ddp_trainer_check.py WORK --reference 2          # one process, mean of 2 ranks' losses
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline import distributed  # noqa: E402
from pipeline.training import OptimConfig, Trainer, step_rng  # noqa: E402


def batch(step: int, rank: int):
    rng = step_rng(0, step, rank)
    return (torch.from_numpy(rng.normal(size=(16, 4)).astype(np.float32)),
            torch.from_numpy(rng.integers(0, 3, 16)))


def main() -> None:
    work = Path(sys.argv[1])
    ranks = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--reference" else None
    distributed.setup("cpu")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    trainer = Trainer(net, OptimConfig(lr=0.05, warmup_steps=0), total_steps=5, device="cpu", work_dir=work)

    def train_step(step: int):
        if ranks is None:   # DDP: this rank's batch; DistributedDataParallel averages the gradients
            x, y = batch(step, distributed.rank())
            return torch.nn.functional.cross_entropy(trainer.net(x), y), {}
        losses = [torch.nn.functional.cross_entropy(net(x), y) for x, y in (batch(step, r) for r in range(ranks))]
        return torch.stack(losses).mean(), {}

    trainer.fit(train_step)
    flat = torch.cat([p.detach().flatten() for p in net.parameters()]).tolist()
    every = distributed.all_gather(flat)
    if distributed.is_main():
        (work / "weights.json").write_text(json.dumps(every))
    distributed.teardown()


if __name__ == "__main__":
    main()
