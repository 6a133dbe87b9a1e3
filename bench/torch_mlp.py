"""Idiomatic PyTorch: `nn.Sequential`, `torch.optim.Adam`, a cosine LR schedule stepped per batch.

`--loader index` keeps the dataset as in-memory tensors and slices a `torch.randperm` per epoch
(the fast way); `--loader dataloader` is the textbook `DataLoader(TensorDataset, shuffle=True)`.
Both drop the last partial batch, like digitsjax. PyTorch's defaults otherwise: its init, Adam's
own implementation, float32 matmuls (PyTorch uses TF32 only when asked to).

`--device cuda` puts the data, the model and the permutation on the GPU. The running loss and
accuracy stay on the device there (on the CPU too, where it costs the same), since reading
them each step would make every step wait for the GPU. `--compile` runs the forward pass and
loss through `torch.compile(mode="reduce-overhead")`: Inductor's fused kernels, replayed as CUDA
graphs on a GPU (a CPU has no CUDA graphs and gets Inductor's C++ code alone). Its first epoch
includes the compilation. Where Inductor cannot compile (no C++ compiler, say), `--compile`
stops with that reason in one line.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
import torch.nn.functional as F
from common import EpochLog, add_epochs_option, load_data, workload
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loader", choices=("index", "dataloader"), default="index")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--compile", action="store_true",
                        help='torch.compile(mode="reduce-overhead") the forward pass and loss')
    add_epochs_option(parser)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device cuda: PyTorch {torch.__version__} sees no CUDA device")
    return args


def build_model(hidden: tuple[int, ...]) -> nn.Sequential:
    sizes = (784, *hidden)
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], 10))


def make_forward(model: nn.Module, device: str, compile_: bool):
    """`(images, labels) -> (mean loss, correct count)`, compiled if asked."""
    def forward(xb, yb):
        logits = model(xb)
        return F.cross_entropy(logits, yb), (logits.argmax(1) == yb).sum()

    if not compile_:
        return forward
    try:  # a tiny program first, so that a missing toolchain is one line, not a traceback
        torch.compile(lambda t: t * 2 + 1)(torch.ones(4, device=device))
    except Exception as error:  # Inductor raises many kinds; all mean the same here
        lines = [line for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "raised" not in line), type(error).__name__)
        raise SystemExit(f"--compile: torch.compile fails on {device} here: "
                         f"{reason.strip()[:200]}") from None
    return torch.compile(forward, mode="reduce-overhead")


def train_epoch(forward, optimizer, schedule, batches, compiled: bool, device: str):
    """One epoch; returns (seconds, mean training loss), timed until the device is done."""
    started = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)  # reported by the others too
    steps = 0
    for xb, yb in batches:
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()
        optimizer.zero_grad()
        loss, right = forward(xb, yb)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += loss.detach()
        correct += right
        steps += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, loss_sum.item() / steps


def main() -> None:
    args = parse_args()
    w, data = workload(args.epochs), load_data()
    torch.manual_seed(0)
    model = build_model(w.hidden).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=w.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=w.total_steps)
    forward = make_forward(model, args.device, args.compile)

    x, y, test_x, test_y = (torch.from_numpy(a).to(args.device) for a in (
        data.train_images, data.train_labels.astype("int64"), data.test_images,
        data.test_labels.astype("int64")))
    b = w.batch_size
    dataloader = DataLoader(TensorDataset(x, y), batch_size=b, shuffle=True, drop_last=True)

    def index_batches():
        order = torch.randperm(len(x), device=args.device)
        for i in range(w.steps_per_epoch):
            idx = order[i * b:(i + 1) * b]
            yield x[idx], y[idx]

    how = ["DataLoader" if args.loader == "dataloader" else "index batching"]
    how += [args.device] * (args.device != "cpu") + ["compiled"] * args.compile
    log = EpochLog(f"PyTorch ({', '.join(how)})")
    for _ in range(w.epochs):
        model.train()
        batches = dataloader if args.loader == "dataloader" else index_batches()
        seconds, train_loss = train_epoch(forward, optimizer, schedule, batches, args.compile,
                                          args.device)
        model.eval()
        with torch.no_grad():
            accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
        log.epoch(seconds, accuracy)
    log.report(w.steps_per_epoch * b, threads=torch.get_num_threads(), device=args.device,
               compiled=args.compile, train_loss=train_loss)


if __name__ == "__main__":
    main()
