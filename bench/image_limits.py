"""The figures behind `apps/imaging.py`'s and `apps/serve.py`'s image constants: where MNIST's
test digits have their centre of mass (`imaging.CENTRE`), and what one PNG at `imaging.MAX_PIXELS`
costs to decode and normalise (why `serve.MAX_PIXELS` is lower).

`python bench/image_limits.py` (MNIST through $TFDS_DATA_DIR / $DIGITSJAX_MNIST_DIR)
"""

import io
import resource
import time

import numpy as np
from PIL import Image, ImageDraw

from digitsjax.apps import imaging, serve
from digitsjax.core.config import DataConfig
from digitsjax.run.mnist import load_mnist

image = Image.new("L", (8000, imaging.MAX_PIXELS // 8000), 255)  # a dark '7' on white paper
ImageDraw.Draw(image).line([(3000, 1000), (5000, 1000), (3500, 4000)], fill=0, width=300)
buffer = io.BytesIO()
image.save(buffer, "PNG", optimize=True)
png = buffer.getvalue()
del image, buffer
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
start = time.perf_counter()
imaging.load_digit(png)
seconds = time.perf_counter() - start
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(f"a {len(png) / 1e3:.0f} kB PNG of {imaging.MAX_PIXELS:,} pixels: {seconds:.2f} s to decode "
      f"and normalise, peak memory +{grown / 1e9:.2f} GB (serve.MAX_PIXELS = {serve.MAX_PIXELS:,}, "
      f"within serve.MAX_BODY_BYTES = {serve.MAX_BODY_BYTES:,})")

digits = load_mnist(DataConfig()).test_images.reshape(-1, 28, 28).astype(np.float64)
index, mass = np.arange(28.0), digits.sum((1, 2))
rows, cols = digits.sum(2) @ index / mass, digits.sum(1) @ index / mass
print(f"MNIST test set's centres of mass: row {rows.mean():.2f} +- {rows.std():.2f}, "
      f"column {cols.mean():.2f} +- {cols.std():.2f} (imaging.CENTRE = {imaging.CENTRE})")
