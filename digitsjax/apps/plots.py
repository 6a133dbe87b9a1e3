"""The pictures of a trained workdir, written as PNGs into `WORKDIR/plots/`.

Every picture is written whole or not at all, at a path its folder's ledger lists
(`files.OwnedFolder`), or at a new path a user named: never over a file digitsjax did not write.

Figures are built with matplotlib's object API (`Figure`, saved through the Agg canvas), never
pyplot: no display is needed, and no global figure state leaks between calls or threads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from digitsjax.apps.evaluate import confusion_matrix
from digitsjax.core import augment
from digitsjax.core.config import AugmentConfig, Pipeline
from digitsjax.core.data import MNIST, NUM_CLASSES
from digitsjax.core.train import epoch_permutation
from digitsjax.files import OwnedFolder, write_atomic
from digitsjax.run.records import EpochRecord
from digitsjax.run.trained import Network

GRID_COLUMNS = 10
GRID_ROWS = 6
CELL_MARGIN, CELL_TITLE = 3, 10  # pixels of the mosaic around each digit and above it
CORRECT, MISTAKE = "#1a7f37", "#cf222e"
SPLIT_COLORS = {"train": "#0969da", "val": "#bf8700", "test": "#cf222e"}
AUGMENT_COUNT = 30  # three pairs of rows: 950 x 710 pixels, as the other digit grids
ORIGINAL, DISTORTED = "black", "#0969da"


def write_plots(out: Path, network: Network, data: MNIST, records: Sequence[EpochRecord],
                title: str, folder: OwnedFolder | None = None) -> list[Path]:
    """Every plot of one trained network into `out`, its curves (titled `title`) from
    `records`; returns the files written. `folder` is the folder `out` lies in whose ledger
    lists them (by default `out`'s parent: a workdir, for its `plots/`); a file of the same
    name that digitsjax did not write refuses them all, before any is drawn."""
    folder = folder or OwnedFolder(out.parent)
    names = [*PICTURES, *(["curves.png"] if records else []),
             *(["augmentation.png"] if augment.active(network.pipeline.augment) else [])]
    paths = dict(zip(names, figure_paths(folder, out.relative_to(folder.path).as_posix(), names),
                     strict=True))
    predictions = network.classify(data.test_images)
    count = GRID_COLUMNS * GRID_ROWS
    written = [
        plot_samples(data.train_images[:count], data.train_labels[:count],
                     paths["samples.png"]),
        plot_predictions(data.test_images[:count], data.test_labels[:count],
                         predictions[:count], paths["predictions.png"],
                         title=f"The first {count} test images at step {network.step}"),
        plot_mistakes(data.test_images, data.test_labels, predictions, paths["mistakes.png"]),
        plot_confusion(confusion_matrix(data.test_labels, predictions), paths["confusion.png"],
                       title=f"Confusion matrix, {len(predictions):,} test images, "
                             f"step {network.step}"),
    ]
    if "curves.png" in paths:
        written.append(plot_curves(records, paths["curves.png"], title=title))
    if "augmentation.png" in paths:
        before, after = augmentation_sample(network.pipeline, data.train_images)
        written.append(plot_augmentation(before, after, paths["augmentation.png"],
                                         augmentation_title(network.pipeline, len(before))))
    return written


PICTURES = ("samples.png", "predictions.png", "mistakes.png", "confusion.png")
"""The pictures of every trained network (`write_plots`); its curves and augmentation grid
join them when it has records and [augment] on."""


def figure_paths(folder: OwnedFolder, subfolder: str, names: Sequence[str]) -> list[Path]:
    """The paths of the pictures `names` in `folder`'s `subfolder` (e.g. `plots`), checked and
    listed together, and the subfolder made: a file there that digitsjax did not write refuses
    them all before anything is written (`OwnedFolder.targets`)."""
    wanted = [f"{subfolder}/{name}" for name in names]
    earlier = _earlier_pictures(folder, subfolder, wanted)
    paths = [folder.inside(name) if name in earlier else folder.checked(name) for name in wanted]
    folder.record(*earlier, *wanted)  # after every check: a refusal lists nothing
    parts = PurePosixPath(subfolder).parts
    for depth in range(1, len(parts) + 1):
        folder.folder("/".join(parts[:depth]))
    return paths


MATPLOTLIB_PNG = b"Software\x00Matplotlib version"
"""The text chunk matplotlib writes into every PNG it saves."""


def _earlier_pictures(folder: OwnedFolder, subfolder: str, wanted: list[str]) -> list[str]:
    """Of the pictures `wanted`, those a version before the ledger drew into `subfolder` (and
    the subfolder), which may be drawn again: only while the ledger does not list the
    subfolder yet, and only PNGs that matplotlib saved (its text chunk). Anything else there
    stays the user's."""
    if folder.owns(subfolder) or not folder.inside(subfolder).is_dir():
        return []
    earlier = [name for name in wanted if _drawn_by_matplotlib(folder.inside(name))]
    return [f"{subfolder}/", *earlier] if earlier else []


def _drawn_by_matplotlib(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(4096)
    return head.startswith(b"\x89PNG") and MATPLOTLIB_PNG in head


def _save(figure: Figure, path: Path) -> Path:
    """The figure as a PNG at `path`, written whole or not at all (`files.write_atomic`): a
    failure is one `FileError`, and no half-written picture is left."""
    FigureCanvasAgg(figure)
    write_atomic(path, lambda f: figure.savefig(f, format="png", dpi=100))
    return path


def _digit_grid(images: Sequence[np.ndarray | None], titles: Sequence[str],
                colors: Sequence[str], title: str,
                framed: Sequence[bool] | None = None) -> Figure:
    """Digits in rows of ten, each with a coloured title; `framed` ones get a red frame; a
    None leaves its cell empty.

    One mosaic image in one axes: a hundred small axes would take seconds to draw.
    """
    rows = max(1, -(-len(images) // GRID_COLUMNS))
    cell = 28 + 2 * CELL_MARGIN
    mosaic = np.zeros((rows * cell + CELL_TITLE * rows, GRID_COLUMNS * cell), np.float32)
    figure = Figure(figsize=(GRID_COLUMNS * 0.95, rows * 1.1 + 0.5), layout="constrained")
    figure.suptitle(title)
    ax = figure.subplots()
    ax.set_axis_off()
    for i, image in enumerate(images):
        if image is None:
            continue
        top = (i // GRID_COLUMNS) * (cell + CELL_TITLE) + CELL_TITLE + CELL_MARGIN
        left = (i % GRID_COLUMNS) * cell + CELL_MARGIN
        mosaic[top:top + 28, left:left + 28] = image.reshape(28, 28)
        ax.text(left + 14, top - CELL_MARGIN - 1, titles[i], color=colors[i], fontsize=9,
                ha="center", va="bottom")
        highlight = framed is not None and framed[i]
        ax.add_patch(Rectangle((left - 1, top - 1), 29, 29, fill=False,
                               edgecolor=MISTAKE if highlight else "#d0d7de",
                               linewidth=2.5 if highlight else 0.6))
    ax.imshow(mosaic, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    return figure


def plot_samples(images: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """Training digits with their labels: what the network learns from."""
    figure = _digit_grid(images, [str(label) for label in labels], ["black"] * len(images),
                         f"The first {len(images)} training images and their labels")
    return _save(figure, path)


def plot_predictions(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                     path: Path, title: str) -> Path:
    """Test digits titled with the prediction; a mistake shows `true -> predicted`, in red."""
    wrong = predictions != labels
    titles = [f"{t} → {p}" if w else str(p) for t, p, w in zip(labels, predictions, wrong,
                                                              strict=True)]
    colors = [MISTAKE if w else CORRECT for w in wrong]
    figure = _digit_grid(images, titles, colors,
                         f"{title}: predicted digit, mistakes (true → predicted) in red "
                         f"({int(wrong.sum())} of {len(images)})", framed=wrong)
    return _save(figure, path)


def plot_mistakes(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                  path: Path, count: int = GRID_COLUMNS * GRID_ROWS) -> Path:
    """The first test images the network gets wrong, titled `true -> predicted`."""
    wrong = np.flatnonzero(predictions != labels)
    shown = wrong[:count]
    figure = _digit_grid(images[shown],
                         [f"{labels[i]} → {predictions[i]}" for i in shown],
                         [MISTAKE] * len(shown),
                         f"The first {len(shown)} of {len(wrong)} misclassified test images "
                         "(true → predicted)")
    return _save(figure, path)


def augmentation_sample(pipeline: Pipeline, train_images: np.ndarray,
                        count: int = AUGMENT_COUNT) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images of training's first batch (at most a batch): as loaded, and as
    step 0 trains on them, each (count, 784).

    Drawn with training's own keys: the batch is epoch 0's order of the root key
    `PRNGKey(seed)` (model 0's, for K models), its distortions `augment.distort_step` at step
    0, on the whole batch, as `core.train.train_step` does. `train_images` is the training
    split of `load_mnist(pipeline.data)`. With [augment] off, training leaves the images as
    they are, and so does this.
    """
    key, step = jax.random.PRNGKey(pipeline.seed), jnp.int32(0)
    order = epoch_permutation(key, step, train_images.shape[0])
    batch = jnp.asarray(train_images)[order[:pipeline.train.batch_size]]
    after = batch
    if augment.active(pipeline.augment):
        after = jax.jit(augment.distort_step, static_argnums=3)(batch, key, step,
                                                               pipeline.augment)
    return np.asarray(batch[:count]), np.asarray(after[:count])


def augmentation_title(pipeline: Pipeline, count: int) -> str:
    """Which digits an augmentation grid shows, and the [augment] settings that drew it."""
    model = f" of model 0 (of {pipeline.train.num_models})" if pipeline.train.num_models > 1 \
        else ""
    return (f"{pipeline.name}: the first {count} images of step 0's batch{model}, as loaded "
            f"(upper rows) and as trained on (lower rows)\n[augment] "
            f"{augment_settings(pipeline.augment)}")


def augment_settings(config: AugmentConfig) -> str:
    """`rotation = 15, elastic_alpha = 34, elastic_sigma = 4`: the strengths in use, or off."""
    used = [(f.name, getattr(config, f.name)) for f in dataclasses.fields(config)
            if getattr(config, f.name) and (f.name != "elastic_sigma" or config.elastic_alpha)]
    return ", ".join(f"{name} = {value:g}" for name, value in used) or "off: every strength is 0"


def plot_augmentation(before: np.ndarray, after: np.ndarray, path: Path, title: str) -> Path:
    """Pairs of rows: ten digits as loaded, the same ten distorted below them."""
    cells: list[np.ndarray | None] = []
    titles: list[str] = []
    for start in range(0, len(before), GRID_COLUMNS):
        for images, label in ((before, "original"), (after, "distorted")):
            chunk = list(images[start:start + GRID_COLUMNS])
            blank = GRID_COLUMNS - len(chunk)
            cells += chunk + [None] * blank
            titles += [label] * len(chunk) + [""] * blank
    colors = [ORIGINAL if label == "original" else DISTORTED for label in titles]
    return _save(_digit_grid(cells, titles, colors, title), path)


def plot_curves(records: Sequence[EpochRecord], path: Path, title: str) -> Path:
    """Loss and accuracy per epoch for train, validation and test, from metrics.jsonl."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    figure.suptitle(f"{title}: loss and accuracy per epoch")
    loss_ax, acc_ax = figure.subplots(1, 2)
    for split, color in SPLIT_COLORS.items():
        points = [(r["epoch"], r[f"{split}_loss"], r[f"{split}_accuracy"]) for r in records
                  if f"{split}_accuracy" in r]
        if not points:
            continue
        epochs, losses, accuracies = zip(*points, strict=True)
        loss_ax.plot(epochs, losses, "o-", color=color, label=split, markersize=3)
        acc_ax.plot(epochs, 100 * np.array(accuracies), "o-", color=color, label=split,
                    markersize=3)
    loss_ax.set(xlabel="epoch", ylabel="loss (mean over the split)", title="cost")
    loss_ax.set_yscale("log")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(figure, path)


def plot_confusion(matrix: np.ndarray, path: Path, title: str) -> Path:
    """Counts of (true, predicted) pairs; a log colour scale makes rare confusions visible."""
    figure = Figure(figsize=(7, 6.2), layout="constrained")
    ax = figure.subplots()
    shown = np.ma.masked_equal(matrix, 0)
    image = ax.imshow(shown, cmap="Blues", norm=LogNorm(vmin=1, vmax=max(2, matrix.max())))
    figure.colorbar(image, ax=ax, label="test images (log scale)")
    threshold = np.sqrt(max(2, matrix.max()))  # the middle of the log scale
    for (true, predicted), count in np.ndenumerate(matrix):
        if count:
            ax.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                    color="white" if count > threshold else "black")
    ticks = range(NUM_CLASSES)
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted digit", ylabel="true digit",
           title=title)
    return _save(figure, path)


def plot_sweep(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Train, validation and test accuracy of each sweep variant, in the grid's order."""
    figure = Figure(figsize=(min(24.0, max(6.0, 1.3 * len(rows) + 2)), 4.5),
                    layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(rows))
    for split, color in SPLIT_COLORS.items():
        key = f"{split}_accuracy"
        values = [100 * r[key] if r.get(key) is not None else np.nan for r in rows]
        ax.plot(positions, values, "o-", color=color, label=split)
        if split == "test":
            for x, y in zip(positions, values, strict=True):
                if not np.isnan(y):
                    ax.annotate(f"{y:.2f}%", (x, y), textcoords="offset points", xytext=(0, -14),
                                ha="center", fontsize=8, color=color)
    ax.set_xticks(positions, [f"{r['variant']}\n{r['parameters']:,} params" for r in rows],
                  fontsize=8)
    ax.set(ylabel="accuracy after the last epoch (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(figure, path)


def plot_sweep_key(rows: list[dict[str, Any]], key: str, path: Path, title: str) -> Path:
    """Validation and test accuracy against one swept key's value: every point (seeds and the
    other keys' values scatter) and the mean per value; a log axis for values spanning 10x."""
    figure = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = figure.subplots()
    values = sorted({row[key] for row in rows})
    for split in ("val", "test"):
        points = [(row[key], 100 * row[f"{split}_accuracy"]) for row in rows
                  if row.get(f"{split}_accuracy") is not None]
        if not points:
            continue
        ax.scatter(*zip(*points, strict=True), s=12, alpha=0.4, color=SPLIT_COLORS[split])
        means = [np.mean([a for v, a in points if v == value]) for value in values
                 if any(v == value for v, _ in points)]
        ax.plot([v for v in values if any(p == v for p, _ in points)], means, "o-",
                color=SPLIT_COLORS[split], label=f"{split} (mean)")
    if min(values) > 0 and max(values) >= 10 * min(values):
        ax.set_xscale("log")
    ax.set(xlabel=key, ylabel="accuracy after the last epoch (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(figure, path)


def plot_sweep_heatmap(rows: list[dict[str, Any]], keys: tuple[str, str], path: Path,
                       title: str) -> Path:
    """Mean validation accuracy over the grid of two swept keys (rows: the first)."""
    ys, xs = (sorted({str(row[k]) for row in rows}, key=_numeric_first) for k in keys)
    grid = np.full((len(ys), len(xs)), np.nan)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            cell = [row["val_accuracy"] for row in rows if str(row[keys[0]]) == y
                    and str(row[keys[1]]) == x and row.get("val_accuracy") is not None]
            grid[i, j] = 100 * np.mean(cell) if cell else np.nan
    figure = Figure(figsize=(1.0 * len(xs) + 3, 0.6 * len(ys) + 2), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color="white")
    ax.set_xticks(range(len(xs)), xs, fontsize=8)
    ax.set_yticks(range(len(ys)), ys, fontsize=8)
    ax.set(xlabel=keys[1], ylabel=keys[0], title=title)
    figure.colorbar(image, ax=ax, label="validation accuracy (%)")
    return _save(figure, path)


def _numeric_first(text: str) -> tuple[int, float, str]:
    try:
        return 0, float(text), text
    except ValueError:
        return 1, 0.0, text


def plot_sweep_curves(curves: dict[str, list[tuple[int, float]]], path: Path,
                      title: str) -> Path:
    """Validation accuracy per epoch of the named points (the best of a sweep)."""
    figure = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = figure.subplots()
    for name, points in curves.items():
        epochs, accuracies = zip(*points, strict=True) if points else ((), ())
        ax.plot(epochs, [100 * a for a in accuracies], "o-", markersize=3, label=name)
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(figure, path)


def plot_population_schedules(schedules: dict[str, list[tuple[int, dict[str, float]]]],
                              keys: list[str], epochs: int, best: str | None, path: Path,
                              title: str) -> Path:
    """Each population member's values over the epochs (one panel per perturbed key): a step
    where it took another's state and perturbed values; the best member drawn bold."""
    figure = Figure(figsize=(7.0, 2.6 * len(keys) + 0.8), layout="constrained")
    axes = np.atleast_1d(figure.subplots(len(keys), 1, sharex=True))
    for ax, key in zip(axes, keys, strict=True):
        for name, steps in schedules.items():
            xs = [epoch for epoch, _ in steps] + [epochs]
            ys = [values[key] for _, values in steps] + [steps[-1][1][key]]
            bold = name == best
            ax.step(xs, ys, where="post", linewidth=2.2 if bold else 0.8,
                    alpha=1.0 if bold else 0.5, label=f"{name} (best)" if bold else None)
        values = [values[key] for steps in schedules.values() for _, values in steps]
        if min(values) > 0 and max(values) >= 10 * min(values):
            ax.set_yscale("log")
        ax.set(ylabel=key)
        ax.grid(alpha=0.3)
    if best is not None:
        axes[0].legend(fontsize=8)
    axes[-1].set(xlabel="epoch")
    axes[0].set(title=title)
    return _save(figure, path)


def plot_population_lineage(lineage: list[dict[str, Any]], members: list[str], epochs: int,
                            path: Path, title: str) -> Path:
    """Who took whose state when: a row per member, an arrow from the parent's row to the
    copy's at each exploit step's epoch."""
    figure = Figure(figsize=(max(8.0, 0.5 * epochs + 5), 0.3 * len(members) + 1.8),
                    layout="constrained")
    ax = figure.subplots()
    for row in range(len(members)):
        ax.axhline(row, color="0.85", linewidth=0.8, zorder=0)
    for copy in lineage:
        ax.annotate("", xy=(copy["epoch"], copy["member"]),
                    xytext=(copy["epoch"] - 0.35, copy["parent"]),
                    arrowprops={"arrowstyle": "->", "color": "tab:blue", "alpha": 0.7})
    ax.set_yticks(range(len(members)), [f"{n}: {name}" for n, name in enumerate(members)],
                  fontsize=7)
    ax.set_xlim(0, epochs)
    ax.set_ylim(len(members) - 0.5, -0.5)
    ax.set(xlabel="epoch")
    ax.set_title(f"{title}\n(an arrow: the member at its head took the state of the one at "
                 "its tail)", fontsize=9)
    return _save(figure, path)


def plot_comparison(records: dict[str, list[EpochRecord]], path: Path) -> Path:
    """Validation and test accuracy per epoch of several runs, one colour per run."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    figure.suptitle("runs compared: accuracy per epoch")
    axes = dict(zip(("val", "test"), figure.subplots(1, 2), strict=True))
    for name, run in records.items():
        for split, ax in axes.items():
            points = [(r["epoch"], 100 * r[f"{split}_accuracy"]) for r in run
                      if f"{split}_accuracy" in r]
            if points:
                ax.plot(*zip(*points, strict=True), "o-", label=name, markersize=3)
    for split, ax in axes.items():
        ax.set(xlabel="epoch", ylabel="accuracy (%)",
               title={"val": "validation", "test": "test"}[split])
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(figure, path)
