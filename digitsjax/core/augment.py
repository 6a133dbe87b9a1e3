"""Distortions of training images on the device: random affine maps and elastic deformations.

Each example of each step gets its own distortion, drawn from
`fold_in(fold_in(fold_in(root key, AUGMENT), step), example)`: a pure function of the run's
key and the example's place in the run, so an augmented run still has one fingerprint, resumes
exactly mid-epoch, and each of K vmapped models (its own key) sees its own distortions.

A distortion maps every output pixel back to a point of the source image and reads it there by
bilinear interpolation (outside the image is blank paper, 0):

    source = A (p - centre) + centre + t + alpha * smooth(uniform field)

A is rotation x shear x per-axis scale, t a translation, and the last term Simard, Steinkraus and
Platt's (2003) elastic distortion: a uniform random displacement field smoothed by a Gaussian
of standard deviation sigma, scaled by alpha. The smoothing is two small matrix multiplies
(G F G^T, the Gaussian as a 28 x 28 matrix), and the interpolation four gathers: array code that
XLA fuses and that costs little beside a training step on any backend.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from digitsjax.core.data import IMAGE_SIDE
from digitsjax.core.hyper import known_zero

if TYPE_CHECKING:
    from digitsjax.core.config import AugmentConfig

AUGMENT_STREAM = 3
"""The root key's stream for distortions (train.py folds 0-2 out of it for init, data order
and dropout)."""

_CENTRE = (IMAGE_SIDE - 1) / 2.0


def active(config: AugmentConfig) -> bool:
    """Whether `config` may distort anything; an inactive section leaves training untouched.

    A sweep's per-model strengths count as active: their zeros are the identity, computed.
    """
    strengths = (config.rotation, config.shear, config.scale, config.translation,
                 config.elastic_alpha)
    return not all(known_zero(strength) for strength in strengths)


def example_keys(root_key: jax.Array, step: jax.Array, batch_size: int) -> jax.Array:
    """One key per example of step `step`'s batch: (root, AUGMENT, step, example)."""
    step_key = jax.random.fold_in(jax.random.fold_in(root_key, AUGMENT_STREAM), step)
    return jax.vmap(functools.partial(jax.random.fold_in, step_key))(jnp.arange(batch_size))


def distort(images: jax.Array, keys: jax.Array, config: AugmentConfig) -> jax.Array:
    """Images (B, 784) in [0, 1], one key each -> the distorted images (B, 784).

    Always runs the full resampling (with zero strengths it returns the images bit for bit);
    training calls it only when `active(config)`.
    """
    side = IMAGE_SIDE
    y, x = _source_points(keys, config)                                   # each (B, side, side)
    return _bilinear(images.reshape(-1, side, side), y, x).reshape(images.shape)


def distort_step(images: jax.Array, root_key: jax.Array, step: jax.Array,
                 config: AugmentConfig) -> jax.Array:
    """What training does to step `step`'s batch."""
    return distort(images, example_keys(root_key, step, images.shape[0]), config)


def _source_points(keys: jax.Array, config: AugmentConfig) -> tuple[jax.Array, jax.Array]:
    """Where each output pixel of each example reads the source: (y, x), each (B, side, side).

    Written over the whole batch with elementwise maths and two plain matrix multiplies: XLA:CPU
    runs these as a few large fused kernels, where vmapped per-example products would be many
    small ones.
    """
    elastic = not known_zero(config.elastic_alpha)
    words = jax.vmap(lambda k: jax.random.bits(k, (_AFFINE_DRAWS + elastic * _FIELD_WORDS,),
                                               jnp.uint32))(keys)
    m00, m01, m10, m11, ty, tx = _affine(_signed_uniform(words[:, :_AFFINE_DRAWS], 24), config)
    rows = jnp.arange(IMAGE_SIDE, dtype=jnp.float32)[:, None] - _CENTRE     # (side, 1)
    cols = jnp.arange(IMAGE_SIDE, dtype=jnp.float32)[None, :] - _CENTRE     # (1, side)

    def at(a, b, shift):  # a * rows + b * cols + centre + shift, per example
        return (a[:, None, None] * rows + b[:, None, None] * cols) + _CENTRE + shift[:, None, None]

    y, x = at(m00, m01, ty), at(m10, m11, tx)
    if elastic:
        dy, dx = _elastic(words[:, _AFFINE_DRAWS:], config)
        y, x = y + dy, x + dx
    return y, x


_AFFINE_DRAWS = 6  # angle, shear, two scales, two shifts
_FIELD_WORDS = IMAGE_SIDE * IMAGE_SIDE // 2  # four 8-bit draws per word: (y, x) at each pixel


def _signed_uniform(bits: jax.Array, resolution: int) -> jax.Array:
    """Unsigned random bits -> uniform in [-1, 1) on a grid of 2**resolution points."""
    top = (bits >> (32 - resolution)).astype(jnp.float32) * (2.0 ** (1 - resolution))
    return top - 1.0


def _affine(u: jax.Array, config: AugmentConfig) -> tuple[jax.Array, ...]:
    """Per example, the map rotation x shear x scale on (y, x) and the shift, from six uniforms.

    Multiplied out by hand: [[c, -s], [s, c]] @ [[1, 0], [t, 1]] @ diag(a, b).
    """
    radians = np.pi / 180  # as np.deg2rad, which per-model (traced) strengths cannot take
    angle, shear = config.rotation * radians * u[:, 0], config.shear * radians * u[:, 1]
    c, s, t = jnp.cos(angle), jnp.sin(angle), jnp.tan(shear)
    # reading the source at p / f draws the digit f times larger
    a, b = 1.0 / (1.0 + config.scale * u[:, 2]), 1.0 / (1.0 + config.scale * u[:, 3])
    return ((c - s * t) * a, -s * b, (s + c * t) * a, c * b,
            config.translation * u[:, 4], config.translation * u[:, 5])


def _elastic(bits: jax.Array, config: AugmentConfig) -> tuple[jax.Array, jax.Array]:
    """Simard et al.'s displacement field, (dy, dx) in pixels, each (B, side, side).

    The uniform noise is drawn at 8-bit resolution, four values per random word: the random
    bits are most of the cost, and smoothing averages ~2 pi sigma**2 of the values, so the
    coarser grid leaves no trace in the field.
    """
    side = IMAGE_SIDE
    quarters = jnp.stack([bits << shift for shift in (0, 8, 16, 24)], axis=1)  # (B, 4, side²/2)
    field = _signed_uniform(quarters, 8).reshape(-1, side, side)          # (B*2, side, side)
    sigma = config.elastic_sigma
    g = _traced_gaussian(sigma) if isinstance(sigma, jax.Array) else \
        jnp.asarray(gaussian_matrix(sigma))
    smooth = _along_last_axis(_along_last_axis(field, g).swapaxes(1, 2), g).swapaxes(1, 2)
    smooth = (config.elastic_alpha * smooth).reshape(-1, 2, side, side)
    return smooth[:, 0], smooth[:, 1]


def _along_last_axis(field: jax.Array, g: jax.Array) -> jax.Array:
    """Smooth (n, side, side) along its last axis: one (n * side, side) x (side, side) product."""
    flat = field.reshape(-1, IMAGE_SIDE)
    return jnp.matmul(flat, g.T, precision=jax.lax.Precision.HIGHEST).reshape(field.shape)


@functools.cache
def gaussian_matrix(sigma: float) -> np.ndarray:
    """Convolution with a normalised Gaussian of std `sigma` over zero padding, as a matrix."""
    offsets = np.arange(IMAGE_SIDE)[:, None] - np.arange(IMAGE_SIDE)[None, :]
    full = np.arange(-4 * IMAGE_SIDE, 4 * IMAGE_SIDE + 1)
    norm = np.exp(-full**2 / (2 * sigma**2)).sum()
    return (np.exp(-offsets**2 / (2 * sigma**2)) / norm).astype(np.float32)


def _traced_gaussian(sigma: jax.Array) -> jax.Array:
    """`gaussian_matrix` for a per-model sigma, in float32 on the device."""
    offsets = jnp.arange(IMAGE_SIDE)[:, None] - jnp.arange(IMAGE_SIDE)[None, :]
    full = jnp.arange(-4 * IMAGE_SIDE, 4 * IMAGE_SIDE + 1)
    norm = jnp.sum(jnp.exp(-full**2 / (2 * sigma**2)))
    return jnp.exp(-offsets**2 / (2 * sigma**2)) / norm


def _bilinear(images: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
    """`images` (B, side, side) read at points (y, x), each (B, side, side); 0 outside."""
    side = IMAGE_SIDE
    y0, x0 = jnp.floor(y), jnp.floor(x)
    fy, fx = y - y0, x - x0
    flat = images.reshape(images.shape[0], -1)

    def pixel(yi, xi):
        inside = (yi >= 0) & (yi < side) & (xi >= 0) & (xi < side)
        index = jnp.clip(yi, 0, side - 1).astype(jnp.int32) * side \
            + jnp.clip(xi, 0, side - 1).astype(jnp.int32)
        values = jnp.take_along_axis(flat, index.reshape(flat.shape), axis=1)
        return jnp.where(inside, values.reshape(yi.shape), 0.0)

    top = (1 - fx) * pixel(y0, x0) + fx * pixel(y0, x0 + 1)
    bottom = (1 - fx) * pixel(y0 + 1, x0) + fx * pixel(y0 + 1, x0 + 1)
    return (1 - fy) * top + fy * bottom
