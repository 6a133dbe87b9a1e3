"""Idiomatic PyTorch: `nn.Sequential`, `torch.optim.Adam`, a cosine LR schedule stepped per batch.

`--loader index` keeps the dataset as in-memory tensors and slices a `torch.randperm` per epoch
(the fast way); `--loader dataloader` is the textbook `DataLoader(TensorDataset, shuffle=True)`.
Both drop the last partial batch, like digitsjax. PyTorch's default init is used.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
import torch.nn.functional as F
from common import EpochLog, load_data, workload
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loader", choices=("index", "dataloader"), default="index")
    loader = parser.parse_args().loader
    w, data = workload(), load_data()
    torch.manual_seed(0)

    sizes = (784, *w.hidden)
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(sizes[-1], 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=w.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=w.total_steps)

    x = torch.from_numpy(data.train_images)
    y = torch.from_numpy(data.train_labels).long()
    test_x = torch.from_numpy(data.test_images)
    test_y = torch.from_numpy(data.test_labels).long()
    b = w.batch_size
    dataloader = DataLoader(TensorDataset(x, y), batch_size=b, shuffle=True, drop_last=True)

    def index_batches():
        order = torch.randperm(len(x))
        for i in range(w.steps_per_epoch):
            idx = order[i * b:(i + 1) * b]
            yield x[idx], y[idx]

    log = EpochLog(f"PyTorch ({'DataLoader' if loader == 'dataloader' else 'index batching'})")
    for _ in range(w.epochs):
        model.train()
        started = time.perf_counter()
        loss_sum, correct = 0.0, 0  # the training metrics digitsjax and Keras report too
        for xb, yb in (dataloader if loader == "dataloader" else index_batches()):
            optimizer.zero_grad()
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item()
            correct += (logits.argmax(1) == yb).sum().item()
        seconds = time.perf_counter() - started
        model.eval()
        with torch.no_grad():
            accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
        log.epoch(seconds, accuracy)
    log.report(w.steps_per_epoch * b, threads=torch.get_num_threads(),
               train_loss=loss_sum / w.steps_per_epoch)


if __name__ == "__main__":
    main()
