"""How well trained networks read digits drawn outside MNIST, as a user of the drawing page would.

    python bench/drawn_digits.py WORKDIR [WORKDIR ...] [--count N] [--seed S]
                                 [--save-examples DIR] [--checkpoint latest|best|STEP]

MNIST's test set says how a network does on MNIST; `predict` and `serve` get pictures that
people draw: strokes of one round pen, at whatever size, thickness and place on the page they
chose, slanted their own way. This bench draws such pictures from stroke templates (several
styles per digit, polylines in a unit box, as tests/test_browser.py draws on the page), writes
them as PNG files and classifies them through `api.classify_files`: the path that
`digitsjax predict` takes (imaging.py's normalisation, then the network). It never reads MNIST.

The sample is seeded: each factor (thickness, digit height, position, slant, page size, paper
colour) takes each of its levels equally often, shuffled independently, so every row of the
breakdown holds about count / levels pictures and two workdirs are scored on the same pictures.
With two or more workdirs the table adds each one's difference from the first, and counts the
pictures on which only one of the two is right (what a paired comparison rests on).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

Point = tuple[float, float]
Stroke = list[Point]

# --- Stroke templates -----------------------------------------------------------------------
# Unit box: x from 0 (left) to 1 (right), y from 0 (top) to 1 (bottom); the renderer narrows
# x to a digit's width. Angles are in degrees as on a clock face turned to maths: 0 is right,
# 90 the top, 180 the left, 270 the bottom; increasing angles go anticlockwise on the page.


def arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float,
        points: int = 24) -> Stroke:
    """An elliptical arc from angle `start` to `stop` (degrees, either direction)."""
    return [(cx + rx * math.cos(math.radians(a)), cy - ry * math.sin(math.radians(a)))
            for a in np.linspace(start, stop, points)]


def join(*parts: Stroke) -> Stroke:
    """One stroke through several pieces, in order: the pen does not lift between them."""
    return [point for part in parts for point in part]


def _templates() -> dict[int, dict[str, list[Stroke]]]:
    """Two or three ways people write each digit: the common variants of school and print
    hands (a 1 with and without a flag, a 7 with and without a bar, an open and a closed 4, a
    9 with a straight and a curved tail), each as the strokes a pen would draw."""
    nine_loop = arc(0.45, 0.27, 0.38, 0.26, 10, 370)
    eight_top, eight_bottom = (0.5, 0.25, 0.33, 0.25), (0.5, 0.72, 0.42, 0.28)
    five_belly = arc(0.45, 0.7, 0.45, 0.3, 150, -140)
    seven = [(0.05, 0.02), (0.95, 0.02), (0.4, 1.0)]
    one = [(0.2, 0.25), (0.55, 0.0), (0.55, 1.0)]
    return {
        0: {"oval": [arc(0.5, 0.5, 0.45, 0.5, 90, 450, 40)],
            "overlapping": [arc(0.5, 0.5, 0.42, 0.5, 70, 445, 40)]},
        1: {"stick": [[(0.5, 0.0), (0.5, 1.0)]],
            "flag": [one],
            "flag and base": [one, [(0.2, 1.0), (0.9, 1.0)]]},
        2: {"curved": [join(arc(0.5, 0.28, 0.42, 0.28, 160, -30), [(0.05, 1.0), (0.95, 1.0)])],
            "angular": [[(0.08, 0.18), (0.45, 0.0), (0.9, 0.12), (0.9, 0.35), (0.05, 1.0),
                         (0.95, 1.0)]]},
        3: {"round": [join(arc(0.5, 0.25, 0.4, 0.25, 150, -90),
                           arc(0.5, 0.75, 0.45, 0.25, 90, -150))],
            "flat top": [join([(0.1, 0.0), (0.9, 0.0), (0.45, 0.42)],
                              arc(0.5, 0.71, 0.45, 0.29, 100, -150))]},
        4: {"open": [[(0.2, 0.0), (0.08, 0.62), (0.95, 0.62)], [(0.72, 0.05), (0.72, 1.0)]],
            "closed": [[(0.72, 1.0), (0.72, 0.0), (0.05, 0.68), (0.95, 0.68)]]},
        5: {"two strokes": [join([(0.2, 0.0), (0.12, 0.45)], five_belly),
                            [(0.2, 0.0), (0.9, 0.0)]],
            "one stroke": [join([(0.9, 0.0), (0.2, 0.0), (0.12, 0.45)], five_belly)]},
        6: {"curved": [join(arc(0.85, 0.75, 0.75, 0.75, 105, 180),
                            arc(0.5, 0.72, 0.4, 0.28, 180, 530))],
            "straight": [join([(0.7, 0.0), (0.12, 0.7)], arc(0.5, 0.73, 0.38, 0.27, 190, 540))]},
        7: {"plain": [seven],
            "bar": [seven, [(0.3, 0.52), (0.85, 0.5)]],
            "hooked": [[(0.05, 0.15), (0.1, 0.02), (0.95, 0.02), (0.55, 0.5), (0.42, 1.0)]]},
        8: {"one stroke": [join(arc(*eight_top, 30, 270), arc(*eight_bottom, 90, -270),
                                arc(*eight_top, -90, 30))],
            "two loops": [arc(*eight_top, 0, 360), arc(*eight_bottom, 0, 360)]},
        9: {"straight tail": [join(nine_loop, [(0.83, 0.2), (0.8, 1.0)])],
            "curved tail": [join(nine_loop, arc(0.43, 0.55, 0.4, 0.45, 20, -110))]},
    }


TEMPLATES = _templates()

# --- The sample -------------------------------------------------------------------------------

POSITIONS = {"centre": (0.5, 0.5), "top-left": (0.05, 0.05), "top-right": (0.95, 0.05),
             "bottom-left": (0.05, 0.95), "bottom-right": (0.95, 0.95)}
"""Where the digit's box sits in the room the page leaves it (0 = against the left/top
margin, 1 = against the right/bottom one)."""
FACTORS: dict[str, tuple[Any, ...]] = {
    "thickness": (0.03, 0.06, 0.10),   # pen width, of the page side (the page's pen is 7 %)
    "height": (0.4, 0.6, 0.8),         # digit height, of the page side
    "position": tuple(POSITIONS),
    "slant": (-15, 0, 15),             # degrees; positive leans the top to the right
    "page": (140, 280, 400),           # page side in pixels (the page's canvas is 280)
    "paper": ("white", "black"),       # dark ink on white, or white ink on black
}
SUPERSAMPLE = 4
"""Pictures are drawn this many times larger and scaled down: anti-aliased edges, as a
browser's canvas draws them."""


@dataclass(frozen=True)
class Spec:
    """One picture to draw: everything that decides its pixels (rendering is a pure function
    of it, so a sample is reproducible from its seed)."""

    digit: int
    style: str
    thickness: float
    height: float
    position: str
    slant: float
    page: int
    paper: str
    aspect: float
    """The digit's width over its height (people's 8s are wider than their 1s' flags...)."""
    wobble: int
    """Seed of the small per-stroke offsets that keep multi-stroke digits from lining up
    perfectly, as a hand's do not."""


def sample(count: int, seed: int = 0) -> list[Spec]:
    """`count` pictures: digits in turn, every factor's levels equally often and shuffled."""
    rng = np.random.default_rng(seed)
    levels = {name: [values[i] for i in rng.permutation(np.resize(np.arange(len(values)), count))]
              for name, values in FACTORS.items()}
    specs = []
    for i in range(count):
        digit = i % 10
        styles = sorted(TEMPLATES[digit])
        specs.append(Spec(digit=digit, style=styles[rng.integers(len(styles))],
                          aspect=float(rng.uniform(0.55, 0.75)),
                          wobble=int(rng.integers(2**31)),
                          **{name: levels[name][i] for name in FACTORS}))
    return specs


def label(factor: str, value: Any) -> str:
    """A level as the table prints it: 'thickness 6%', 'slant -15°', 'page 280 px'."""
    if factor in ("thickness", "height"):
        return f"{factor} {round(100 * value)}%"
    if factor == "slant":
        return f"slant {value:+d}°" if value else "slant 0°"
    if factor == "page":
        return f"page {value} px"
    return f"{factor} {value}"


# --- Rendering --------------------------------------------------------------------------------


def _placed(spec: Spec) -> list[np.ndarray]:
    """The template's strokes in page pixels: wobbled, sized, slanted, then moved to the spec's
    position, keeping the pen's whole width on the page."""
    rng = np.random.default_rng(spec.wobble)
    height, pen = spec.height * spec.page, spec.thickness * spec.page
    strokes = []
    for stroke in TEMPLATES[spec.digit][spec.style]:
        points = np.asarray(stroke, np.float64) + rng.normal(0.0, 0.015, 2)
        x, y = (points[:, 0] - 0.5) * spec.aspect * height, (points[:, 1] - 0.5) * height
        strokes.append(np.stack([x - math.tan(math.radians(spec.slant)) * y, y], axis=1))
    everything = np.concatenate(strokes)
    low, high = everything.min(axis=0), everything.max(axis=0)
    margin = pen / 2 + 1
    room_low, room_high = margin - low, spec.page - margin - high
    where = np.asarray(POSITIONS[spec.position])
    offset = np.where(room_high >= room_low, room_low + where * (room_high - room_low),
                      (room_low + room_high) / 2)
    return [stroke + offset for stroke in strokes]


def render(spec: Spec) -> Image.Image:
    """The picture of `spec`: a grayscale page with the digit drawn in one round pen.

    Lines with a circle at every vertex give the round caps and joins of the page's canvas
    (lineCap = lineJoin = "round"); drawing SUPERSAMPLE times larger and averaging down gives
    its anti-aliased edges.
    """
    big, scale = spec.page * SUPERSAMPLE, SUPERSAMPLE
    paper, ink = (255, 0) if spec.paper == "white" else (0, 255)
    image = Image.new("L", (big, big), paper)
    draw = ImageDraw.Draw(image)
    width = max(1, round(spec.thickness * spec.page * scale))
    radius = width / 2
    for stroke in _placed(spec):
        points = [(float(x) * scale, float(y) * scale) for x, y in stroke]
        draw.line(points, fill=ink, width=width)
        for x, y in points:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=ink)
    return image.resize((spec.page, spec.page), Image.Resampling.BOX)


def write_pictures(specs: Sequence[Spec], folder: Path) -> list[Path]:
    """Each spec's picture as a PNG file in `folder`, as a user would hand them to `predict`."""
    paths = []
    for i, spec in enumerate(specs):
        path = folder / f"{i:05d}-{spec.digit}.png"
        render(spec).save(path, "PNG")
        paths.append(path)
    return paths


def contact_sheet(specs: Sequence[Spec], columns: int = 10, cell: int = 96) -> Image.Image:
    """The pictures side by side, each scaled to `cell` px with its digit and style below: to
    look at what the bench draws."""
    caption, gap = 14, 4
    rows = math.ceil(len(specs) / columns)
    sheet = Image.new("L", (columns * (cell + gap), rows * (cell + caption)), 128)
    draw = ImageDraw.Draw(sheet)
    for i, spec in enumerate(specs):
        left, top = (i % columns) * (cell + gap), (i // columns) * (cell + caption)
        sheet.paste(render(spec).resize((cell, cell), Image.Resampling.LANCZOS), (left, top))
        draw.text((left + 2, top + cell + 1), f"{spec.digit} {spec.style}"[:16], fill=255)
    return sheet


# --- Scoring ----------------------------------------------------------------------------------


def score(network: Any, specs: Sequence[Spec], paths: Sequence[Path], name: str) -> dict:
    """One network's answers on the pictures: accuracy overall and per level of each factor
    and per digit. A picture `predict` refuses (it found no digit) counts as wrong."""
    from digitsjax import api
    from digitsjax.core.augment import active

    answers = api.classify_files(network, paths)
    correct = np.array([a.prediction is not None and a.prediction.digit == s.digit
                        for a, s in zip(answers, specs, strict=True)])
    by: dict[str, dict[str, float]] = {}
    for factor in (*FACTORS, "digit"):
        values = [getattr(spec, factor) for spec in specs]
        levels = FACTORS.get(factor, range(10))
        by[factor] = {label(factor, level): float(correct[[v == level for v in values]].mean())
                      for level in levels if level in values}
    return {"workdir": name, "pipeline": network.pipeline.name,
            "augment": active(network.pipeline.augment), "step": network.step,
            "count": len(specs), "refused": sum(a.error is not None for a in answers),
            "accuracy": float(correct.mean()), "by": by, "correct": correct.tolist()}


def evaluate(workdirs: Sequence[str | Path], specs: Sequence[Spec],
             checkpoint: str = "latest") -> list[dict]:
    """Every workdir scored on the same pictures, written once to a temporary folder."""
    from digitsjax import api

    with tempfile.TemporaryDirectory(prefix="drawn-digits-") as folder:
        paths = write_pictures(specs, Path(folder))
        return [score(api.load(workdir, checkpoint), specs, paths, str(workdir))
                for workdir in workdirs]


# --- The report -------------------------------------------------------------------------------


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def table(results: Sequence[dict]) -> str:
    """One markdown table: a column per workdir (and, from the second on, its difference from
    the first in percentage points), a row per level of each factor."""
    base = results[0]
    header = ["", *(r["workdir"] for r in results),
              *(f"Δ {i + 1}-1" for i in range(1, len(results)))]

    def row(name: str, values: list[str], deltas: list[str]) -> str:
        return "| " + " | ".join([name, *values, *deltas]) + " |"

    def accuracy_row(name: str, pick) -> str:
        deltas = [f"{100 * (pick(r) - pick(base)):+.1f}" for r in results[1:]]
        return row(name, [_percent(pick(r)) for r in results], deltas)

    blank = [""] * (len(results) - 1)
    lines = [row(header[0], header[1:len(results) + 1], header[len(results) + 1:]),
             "|" + "---|" * len(header),
             row("pipeline", [r["pipeline"] for r in results], blank),
             row("[augment]", ["on" if r["augment"] else "off" for r in results], blank),
             row("step", [str(r["step"]) for r in results], blank),
             row("refused", [str(r["refused"]) for r in results], blank),
             accuracy_row("**accuracy %**", lambda r: r["accuracy"])]
    for factor, levels in base["by"].items():
        lines += [accuracy_row(level, lambda r, f=factor, lv=level: r["by"][f][lv])
                  for level in levels]
    return "\n".join(lines)


def footnotes(results: Sequence[dict], seed: int) -> str:
    """The sample and its noise; for each later workdir, the pictures only one of it and the
    first gets right (the difference is significant when these are lopsided, McNemar)."""
    count, p = results[0]["count"], results[0]["accuracy"]
    lines = [f"{count} drawn pictures, seed {seed}; standard error of the overall accuracy "
             f"±{100 * math.sqrt(p * (1 - p) / count):.1f} points; a row of a factor with k "
             "levels holds count/k of them, its standard error is √k times larger"]
    first = np.asarray(results[0]["correct"])
    for i, result in enumerate(results[1:], start=2):
        other = np.asarray(result["correct"])
        lines.append(f"{i} vs 1: only {i} right on {int((other & ~first).sum())} pictures, "
                     f"only 1 right on {int((first & ~other).sum())}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", help="trained workdirs to compare")
    parser.add_argument("--count", type=int, default=600, help="pictures to draw (600)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (0)")
    parser.add_argument("--checkpoint", default="latest", help="latest, best or a step")
    parser.add_argument("--save-examples", type=Path, metavar="DIR",
                        help="write DIR/drawn_digits.png, a contact sheet of 50 pictures")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    specs = sample(args.count, args.seed)
    if args.save_examples:
        args.save_examples.mkdir(parents=True, exist_ok=True)
        sheet = args.save_examples / "drawn_digits.png"
        contact_sheet(specs[:50]).save(sheet)
        print(f"examples: {sheet}", file=sys.stderr)
    from digitsjax.errors import UserError

    try:
        results = evaluate(args.workdirs, specs, args.checkpoint)
    except UserError as e:  # a missing or untrained workdir: one line, as the CLI says it
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(results))
    print()
    print(footnotes(results, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
