"""Synthetic seismic images with salt bodies, in the layout of the TGS Salt Identification data.

This is the built-in data of `unetlab demo` and the fixture of the test suite. It is not real
data; it imitates the look and the file quirks of the Kaggle TGS Salt set (101x101 grey images,
binary salt masks) so that the rest of the package treats it exactly like the real thing.

Model of one image (rows are depth, row 0 at the top; everything vectorised with numpy):

* Geology is described by a log-impedance field. Sediments are layers of random thickness;
  each layer's log-impedance is drawn independently (a few layers with strong contrast), so
  the reflectivity, its vertical derivative, is a sparse series of spikes of both signs.
* The layers are deformed by mapping every pixel to a "geological time" t(z, x) = z + shift:
  a regional dip, gentle folds (sum of low-frequency sinusoids whose amplitude grows with
  depth), sometimes a fault (constant throw on one side of a line) and a pull-up of the
  layers near salt (drag decaying with distance from the salt body).
* Salt bodies (dome, diapir with a mushroom head, sheet/lens, flank of a large body, massive
  salt filling most of the image, a body poking in at an edge; sometimes two) are implicit
  shapes with an approximate signed distance and smooth random perturbation of the outline.
  Salt has a high, nearly constant impedance plus weak isotropic noise: its interior is
  chaotic and dim, and the jump into salt gives a strong top-of-salt reflection (and a
  negative one at the base); steep flanks get a wider transition and so image weakly, as in
  real data. Sediments under salt are dimmed (poor illumination).
* Seismic = reflectivity convolved along depth with a zero-phase Ricker wavelet whose dominant
  frequency is drawn per image; band-limited plus white noise is added; amplitudes are clipped
  at a percentile and mapped to uint8 around mid-grey 128.

Image i depends only on (seed, i) (and the size and empty fraction), so a shorter run is a
prefix of a longer one with the same seed.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from unetlab.data.rle import rle_encode
from unetlab.errors import ConfigError
from unetlab.files import atomic_write_bytes

__all__ = ["generate_seismic", "write_tgs_dataset"]

_SALT_KINDS = ("dome", "diapir", "sheet", "flank", "massive", "edge")
_SALT_KIND_P = (0.24, 0.18, 0.16, 0.22, 0.09, 0.11)


# ----------------------------------------------------------------------------- argument checks


def _parse_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        height = width = int(size)
    else:
        try:
            height, width = (int(v) for v in size)  # type: ignore[union-attr]
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"size: {size!r} is not an int or a (height, width) pair; "
                "use e.g. 101 or (96, 128)"
            ) from exc
    if height < 8 or width < 8:
        raise ConfigError(f"size: {height}x{width} is too small; use at least 8x8 (TGS is 101)")
    return height, width


def _check_args(n: int, seed: int, empty_fraction: float) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"n: {n!r} is not a count of images; use an integer >= 0")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: {seed!r} is not usable; use an integer >= 0")
    try:
        fraction = float(empty_fraction)
    except (TypeError, ValueError):
        fraction = float("nan")
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(
            f"empty_fraction: {empty_fraction!r} is out of range; use a value in [0, 1]"
        )


# ----------------------------------------------------------------------------- small helpers


def _fourier_curve(rng: np.random.Generator, u: np.ndarray, amplitude: float, n_terms: int,
                   period: float, decay: float = 1.0) -> np.ndarray:
    """Smooth random curve on coordinate `u`: sinusoids of `period / k`, amplitude ~ 1/k**decay."""
    out = np.zeros_like(u, dtype=np.float64)
    for k in range(1, n_terms + 1):
        a = amplitude * rng.normal() / k**decay
        out += a * np.sin(2.0 * np.pi * k * u / period + rng.uniform(0, 2 * np.pi))
    return out


def _fast_len(n: int) -> int:
    """Smallest 5-smooth integer >= n: FFTs of such lengths are fast (101 is prime)."""
    best = 2 * n
    p2 = 1
    while p2 < best:
        p3 = p2
        while p3 < best:
            p5 = p3
            while p5 < n:
                p5 *= 5
            best = min(best, p5)
            p3 *= 3
        p2 *= 2
    return best


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_z: float,
                  sigma_x: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit std.

    Filtered periodically in the FFT domain on a slightly larger, FFT-friendly grid and cropped,
    which also keeps opposite edges of the crop from being correlated.
    """
    big = (_fast_len(shape[0] + int(3 * sigma_z)) if shape[0] > 1 else 1,
           _fast_len(shape[1] + int(3 * sigma_x)))
    white = rng.standard_normal(big)
    fz = np.fft.fftfreq(big[0])[:, None]
    fx = np.fft.rfftfreq(big[1])[None, :]
    gain = np.exp(-2.0 * np.pi**2 * ((fz * sigma_z) ** 2 + (fx * sigma_x) ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * gain, s=big)[: shape[0], : shape[1]]
    field -= field.mean()  # the DC term survives any smoothing; it is not part of the texture
    return field / (field.std() + 1e-12)


def _ricker_filter(values: np.ndarray, freq: float) -> np.ndarray:
    """Convolve every column with a zero-phase Ricker wavelet of peak `freq` (cycles/pixel).

    Done in the frequency domain (Ricker spectrum ~ f^2/fp^2 exp(-f^2/fp^2)); the wrap-around is
    harmless because the canvas has margins wider than the wavelet above and below the crop.
    """
    f = np.fft.rfftfreq(values.shape[0])[:, None]
    spectrum = (f / freq) ** 2 * np.exp(-((f / freq) ** 2))
    return np.fft.irfft(np.fft.rfft(values, axis=0) * spectrum, n=values.shape[0], axis=0)


# ----------------------------------------------------------------------------- salt geometry


def _ellipse_sd(rng: np.random.Generator, z: np.ndarray, x: np.ndarray, zc: float, xc: float,
                a: float, b: float, rough: float) -> np.ndarray:
    """Approximate signed distance (px, < 0 inside) to an ellipse with a perturbed outline."""
    dz, dx = z - zc, x - xc
    r = np.sqrt((dx / a) ** 2 + (dz / b) ** 2)
    theta = np.arctan2(dz / b, dx / a)
    # perturb the boundary radius with a smooth periodic function of the angle
    radius = 1.0 + _fourier_curve(rng, theta, rough, 6, 2 * np.pi, decay=0.8)
    # first-order distance: (r - R) / |grad r|
    grad = np.sqrt((dx / a**2) ** 2 + (dz / b**2) ** 2) / np.maximum(r, 1e-6)
    return (r - radius) / np.maximum(grad, 1.0 / max(a, b))


def _salt_body(rng: np.random.Generator, kind: str, z: np.ndarray, x: np.ndarray,
               height: int, width: int) -> np.ndarray:
    """Signed distance field (px, < 0 inside salt) of one body of the given kind."""
    zcol, xrow = z[:, :1], x[:1, :]  # curves of depth only / of x only: evaluate them in 1-D
    if kind == "dome":
        # half-ellipse rising from below the bottom edge; size spans sliver .. nearly full
        a = width * rng.uniform(0.2, 1.0)
        b = height * rng.uniform(0.3, 1.3)
        zc = height + height * rng.uniform(-0.05, 0.35)
        xc = width * rng.uniform(-0.25, 1.25)
        return _ellipse_sd(rng, z, x, zc, xc, a, b, rng.uniform(0.02, 0.08))
    if kind == "diapir":
        # narrow meandering stem from the bottom, widening into a rounded (mushroom) head
        xc = width * rng.uniform(0.1, 0.9)
        zh = height * rng.uniform(0.15, 0.65)
        w0 = width * rng.uniform(0.06, 0.16)
        centre = xc + _fourier_curve(rng, zcol, 0.08 * width, 3, 2.5 * height)
        half = w0 * (1.0 + 0.15 * _fourier_curve(rng, zcol, 1.0, 3, 1.5 * height))
        # the stem flares towards the head (smoothly, over ~half the head height)
        bh = height * rng.uniform(0.12, 0.3)
        ah = max(w0 * rng.uniform(1.8, 3.5), bh * 0.8)
        flare = np.clip(1.0 - (zcol - zh) / (2.0 * bh), 0.0, 1.0) ** 2
        half = half + flare * (ah - w0) * 0.6
        stem = np.maximum(np.abs(x - centre) - half, zh - z)
        head = _ellipse_sd(rng, z, x, zh, xc + rng.uniform(-0.3, 0.3) * w0, ah, bh,
                           rng.uniform(0.03, 0.1))
        return np.minimum(stem, head)
    if kind == "sheet":
        # thick, tapered, gently dipping lens; often wider than the image
        z0 = height * rng.uniform(0.1, 0.8)
        dip = rng.uniform(-0.3, 0.3)
        xm = width * rng.uniform(-0.2, 1.2)
        half_len = width * rng.uniform(0.5, 1.6)
        thick = height * rng.uniform(0.12, 0.45)
        xs = x[0]
        line = z0 + dip * (xs - xm) + _fourier_curve(rng, xs, 0.05 * height, 3, 2.0 * width)
        taper = np.sqrt(np.clip(1.0 - ((xs - xm) / half_len) ** 2, 0.0, 1.0))
        half = 0.5 * thick * taper * (1.0 + _fourier_curve(rng, xs, 0.15, 4, 1.5 * width))
        top_shift = _fourier_curve(rng, xs, 0.03 * height, 4, width)
        # pinch out cleanly: salt thinner than the pixels would only leave dotted artefacts
        half = np.where(half < 1.0, -np.inf, half)
        return np.abs(z - (line + top_shift)[None, :]) - half[None, :]
    if kind == "flank":
        # steep irregular side of a large body occupying one side of the image
        x0 = width * rng.uniform(-0.05, 1.05)
        slope = rng.uniform(-1.2, 1.2)
        wiggle = _fourier_curve(rng, zcol, 0.06 * width, 5, 2 * height)
        boundary = x0 + slope * (zcol - height / 2) + wiggle
        sd = (x - boundary) * rng.choice([-1.0, 1.0])
        # the body's top: salt flanks usually end upward somewhere
        top = height * rng.uniform(-0.3, 0.5)
        top = top + _fourier_curve(rng, xrow, 0.05 * height, 3, 2 * width)
        return np.maximum(sd / np.sqrt(1.0 + slope**2), top - z)
    if kind == "edge":
        # a body mostly outside the frame that only pokes in at the left, right or bottom edge
        a = width * rng.uniform(0.15, 0.6)
        b = height * rng.uniform(0.15, 0.6)
        side = rng.integers(3)
        poke = rng.uniform(0.03, 0.3)  # how far into the frame, as a fraction of the image
        along = rng.uniform(0.1, 0.9)
        if side == 0:
            zc, xc = along * height, -a + poke * width
        elif side == 1:
            zc, xc = along * height, width - 1 + a - poke * width
        else:
            zc, xc = height - 1 + b - poke * height, along * width
        return _ellipse_sd(rng, z, x, zc, xc, a, b, rng.uniform(0.03, 0.1))
    # "massive": a salt top across the whole image, the image nearly full of salt
    top = height * rng.uniform(-0.1, 0.35) + xrow * rng.uniform(-0.3, 0.3)
    top = top + _fourier_curve(rng, xrow, 0.08 * height, 5, 2 * width)
    return top - z


# ----------------------------------------------------------------------------- one image


def _salt_distance(r_salt: np.random.Generator, z: np.ndarray, x: np.ndarray, height: int, width: int,
                   margin: int) -> np.ndarray:
    """Signed distance (px) to the salt: a union of bodies that shows inside the crop."""
    for _attempt in range(20):
        kind = _SALT_KINDS[r_salt.choice(len(_SALT_KINDS), p=_SALT_KIND_P)]
        sd = _salt_body(r_salt, kind, z, x, height, width)
        if r_salt.random() < 0.18:  # a second, independent body
            kind2 = _SALT_KINDS[r_salt.choice(3)]
            sd = np.minimum(sd, _salt_body(r_salt, kind2, z, x, height, width))
        if (sd[margin:margin + height] < 0).any():
            return sd
    # practically never: fall back to a dome in the middle
    return _ellipse_sd(r_salt, z, x, height * 1.1, width / 2, width / 2, height / 2, 0.03)


def _geological_time(r_sed: np.random.Generator, zz: np.ndarray, xx: np.ndarray, sd: np.ndarray,
                     has_salt: bool, height: int, width: int, margin: int, rows: int) -> np.ndarray:
    """Geological time of every pixel: dip + folds (+ a fault) + pull-up near salt."""
    z, x = np.broadcast_arrays(zz, xx)
    scale = float(min(height, width))
    dip = np.tan(np.deg2rad(r_sed.uniform(-12, 12)))
    depth_frac = (zz + margin) / rows
    folds = np.zeros((1, width))
    for _ in range(r_sed.integers(1, 4)):
        wavelength = width * r_sed.uniform(1.0, 4.0)
        folds = folds + r_sed.uniform(0.01, 0.05) * scale * np.sin(
            2 * np.pi * xx / wavelength + r_sed.uniform(0, 2 * np.pi))
    t = zz + dip * xx + folds * (0.5 + depth_frac)  # older (deeper) layers more folded
    if r_sed.random() < 0.3:
        # fault: a line at a steep angle; the hanging-wall side is shifted by the throw
        x0, z0 = width * r_sed.uniform(0.15, 0.85), height * r_sed.uniform(0.2, 0.8)
        lean = np.tan(np.deg2rad(r_sed.uniform(-35, 35)))
        throw = r_sed.uniform(0.03, 0.12) * scale * r_sed.choice([-1, 1])
        t = t + throw * ((x - x0) - (z - z0) * lean > 0)
    if has_salt:
        # drag: layers near salt are pulled up; decay length > amplitude keeps t monotonic
        drag_amp = r_sed.uniform(0.02, 0.08) * scale
        drag_len = drag_amp * r_sed.uniform(1.8, 3.0)
        t = t + drag_amp * np.exp(-np.maximum(sd, 0.0) / drag_len)
    return np.broadcast_to(t, z.shape)


def _sediment_impedance(r_sed: np.random.Generator, r_noise: np.random.Generator, t: np.ndarray,
                        width: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-impedance of layers of random thickness and contrast, and its fine 1-D profile."""
    t_lo, t_hi = float(t.min()) - 2, float(t.max()) + 2
    mean_thick = r_sed.uniform(2.0, 6.0)
    n_layers = int((t_hi - t_lo) / mean_thick * 2) + 8
    thick = r_sed.gamma(1.3, mean_thick / 1.3, n_layers)
    bounds = t_lo + np.concatenate([[0.0], np.cumsum(thick)])
    # mostly moderate contrasts with occasional strong ones (sparse-ish, both signs)
    strong = np.where(r_sed.random(n_layers) < 0.15, 2.0, 1.0)
    contrast = r_sed.normal(0.0, 1.0, n_layers) * strong
    layer_val = 0.08 * contrast  # independent layers: reflectivity spikes of both signs
    oversample = 4  # fine grid, then box-smooth one pixel: anti-aliasing of dipping layers
    fine_t = np.arange(t_lo, t_hi, 1.0 / oversample)
    fine = layer_val[np.clip(np.searchsorted(bounds, fine_t) - 1, 0, n_layers - 1)]
    fine = np.convolve(fine, np.ones(oversample) / oversample, mode="same")
    log_imp = np.interp(t, fine_t, fine)
    # laterally varying amplitude, as in real sections
    lateral = 1.0 + 0.25 * _smooth_noise(r_noise, (1, width), 1, 0.2 * width)
    return log_imp * np.clip(lateral, 0.5, 1.5), fine


def _with_salt(r_salt: np.random.Generator, log_imp: np.ndarray, fine: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Salt is faster than the sediments around it: a positive top and a negative base reflection."""
    salt_level = float(np.percentile(fine, 90)) + r_salt.uniform(0.2, 0.35)
    chaos = r_salt.uniform(0.006, 0.015) * _smooth_noise(r_salt, sd.shape, 1.0, 1.3)
    # soft edge: one pixel (anti-aliasing) where the boundary is flat, wider where it is
    # steep, so steep flanks image weakly as in real data instead of as a drawn line
    gz, gx = np.gradient(np.clip(sd, -50.0, 50.0))
    steep = 1.0 - np.abs(gz) / np.sqrt(gz**2 + gx**2 + 1e-12)
    weight = np.clip(0.5 - sd / (1.0 + 4.0 * steep), 0.0, 1.0)
    # poor illumination below salt: dim the sediments under it
    salt_above = np.cumsum(weight, axis=0)
    shadow = 1.0 - r_salt.uniform(0.2, 0.5) * (1.0 - np.exp(-salt_above / 6.0))
    log_imp = log_imp * shadow
    return (1.0 - weight) * log_imp + weight * (salt_level + chaos)


def _seismic_uint8(r_noise: np.random.Generator, log_imp: np.ndarray, freq: float, margin: int,
                   height: int) -> np.ndarray:
    """Reflectivity -> band-limited seismic with noise, cropped, as uint8 around 128 clipped at a percentile."""
    refl = np.zeros_like(log_imp)
    refl[1:] = np.diff(log_imp, axis=0)
    seis = _ricker_filter(refl, freq)
    band_noise = _ricker_filter(_smooth_noise(r_noise, log_imp.shape, 0.5, 1.2), freq)
    sig_std = seis[margin:margin + height].std() + 1e-12
    noise_level = r_noise.uniform(0.05, 0.3) * sig_std / (band_noise.std() + 1e-12)
    seis = seis + noise_level * band_noise
    seis = seis[margin:margin + height]
    seis = seis + r_noise.standard_normal(seis.shape) * sig_std * r_noise.uniform(0.02, 0.08)
    # a little lateral smear, as migration leaves (edge-padded 3-tap filter, no wrap-around)
    side = r_noise.uniform(0.1, 0.3)
    padded = np.pad(seis, ((0, 0), (1, 1)), mode="edge")
    seis = (1 - 2 * side) * seis + side * (padded[:, :-2] + padded[:, 2:])
    clip = np.percentile(np.abs(seis), r_noise.uniform(94.0, 99.5)) + 1e-12
    gain = r_noise.uniform(0.7, 1.1) * 127.0 / clip
    offset = 128.0 + r_noise.uniform(-4, 4)
    return np.clip(np.rint(offset + gain * seis), 0, 255).astype(np.uint8)


def _one_image(seed: int, index: int, height: int, width: int,
               empty_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    # independent streams, so e.g. changing the empty fraction keeps the sediments of image i
    r_choice, r_sed, r_salt, r_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, index]).spawn(4)
    )
    has_salt = r_choice.random() >= empty_fraction
    freq = r_sed.uniform(0.065, 0.14)  # dominant frequency, cycles per pixel
    # margins above and below the crop cover the wavelet support (the depth FFT wraps around)
    rows = _fast_len(height + 2 * (int(np.ceil(2.5 / freq)) + 4))
    margin = (rows - height) // 2
    zz = np.arange(-margin, rows - margin, dtype=np.float64)[:, None]
    xx = np.arange(width, dtype=np.float64)[None, :]
    z, x = np.broadcast_arrays(zz, xx)
    sd = _salt_distance(r_salt, z, x, height, width, margin) if has_salt else np.full(z.shape, np.inf)
    t = _geological_time(r_sed, zz, xx, sd, has_salt, height, width, margin, rows)
    log_imp, fine = _sediment_impedance(r_sed, r_noise, t, width)
    if has_salt:
        log_imp = _with_salt(r_salt, log_imp, fine, sd)
    image = _seismic_uint8(r_noise, log_imp, freq, margin, height)
    return image, (sd < 0)[margin:margin + height].copy()


# ----------------------------------------------------------------------------- public API


def generate_seismic(n: int, size: int | tuple[int, int] = 101, seed: int = 0,
                     empty_fraction: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Generate `n` synthetic seismic images with their salt masks.

    Returns images uint8 (n, H, W) and masks bool (n, H, W); `size` is an int (square) or
    (height, width). Same arguments give identical output, and image i depends only on
    (seed, i): `generate_seismic(10)` is a prefix of `generate_seismic(20)` with the same seed.
    About `empty_fraction` of the images have no salt at all (each image independently).
    """
    _check_args(n, seed, empty_fraction)
    height, width = _parse_size(size)
    images = np.empty((n, height, width), dtype=np.uint8)
    masks = np.empty((n, height, width), dtype=bool)
    for i in range(n):
        images[i], masks[i] = _one_image(int(seed), i, height, width, float(empty_fraction))
    return images, masks


def _sample_id(seed: int, index: int, salt: int = 0) -> str:
    text = f"unetlab-synthetic:{seed}:{index}" + (f":{salt}" if salt else "")
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _csv_bytes(header: list[str], rows: list[list[object]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode()


def write_tgs_dataset(root: str | Path, n: int = 400, size: int | tuple[int, int] = 101,
                      seed: int = 0, empty_fraction: float = 0.35, quirks: bool = True) -> Path:
    """Write a synthetic data set in the TGS Salt folder layout under `root` and return `root`.

    Layout: root/train/images/<id>.png, root/train/masks/<id>.png, root/train.csv (id,rle_mask),
    root/depths.csv (id,z) and root/SYNTHETIC.txt. Ids are 10 lowercase hex characters derived
    from (seed, i). With `quirks` the files copy the real data's oddities: images are RGB with
    three identical channels; empty masks are 8-bit 'L' (all 0), non-empty masks 16-bit 'I;16'
    with values {0, 65535}. Without: images 'L', masks 'L' with {0, 255}. Every file is written
    to a temporary name and renamed into place. Existing files of other ids are left alone.
    """
    _check_args(n, seed, empty_fraction)
    height, width = _parse_size(size)
    root = Path(root)
    image_dir, mask_dir = root / "train" / "images", root / "train" / "masks"
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)

    images, masks = generate_seismic(n, (height, width), seed, empty_fraction)
    train_rows: list[list[object]] = []
    depth_rows: list[list[object]] = []
    used: set[str] = set()
    for i in range(n):
        sample_id, salt = _sample_id(seed, i), 0
        while sample_id in used:  # a 40-bit collision: astronomically rare, but stay unique
            salt += 1
            sample_id = _sample_id(seed, i, salt)
        used.add(sample_id)

        image, mask = images[i], masks[i]
        if quirks:
            pil_image = Image.fromarray(np.repeat(image[:, :, None], 3, axis=2))  # RGB
            if mask.any():
                pil_mask = Image.fromarray(mask.astype(np.uint16) * np.uint16(65535))
            else:
                pil_mask = Image.fromarray(np.zeros(mask.shape, np.uint8))  # L
        else:
            pil_image = Image.fromarray(image)  # L
            pil_mask = Image.fromarray(mask.astype(np.uint8) * np.uint8(255))  # L
        atomic_write_bytes(image_dir / f"{sample_id}.png", _png_bytes(pil_image))
        atomic_write_bytes(mask_dir / f"{sample_id}.png", _png_bytes(pil_mask))

        train_rows.append([sample_id, rle_encode(mask)])
        # depth (m-ish, 50..950): salt images tend to be deeper; loose, like the real data
        r_depth = np.random.default_rng([int(seed), i, 7])
        a, b = (3.0, 2.0) if mask.any() else (2.0, 2.6)
        depth_rows.append([sample_id, int(round(50 + 900 * r_depth.beta(a, b)))])

    atomic_write_bytes(root / "train.csv", _csv_bytes(["id", "rle_mask"], train_rows))
    atomic_write_bytes(root / "depths.csv", _csv_bytes(["id", "z"], depth_rows))
    n_empty = int(sum(1 for row in train_rows if not row[1]))
    note = (
        "SYNTHETIC DATA - not real seismic and not the Kaggle TGS Salt data.\n"
        "Generated by unetlab.data.synthetic.write_tgs_dataset in the TGS Salt folder layout.\n"
        f"seed={int(seed)} n={n} size={height}x{width} empty_fraction={float(empty_fraction)} "
        f"quirks={bool(quirks)} empty_masks={n_empty}\n"
        "Model: layered sediments (random-thickness layers, sparse reflectivity of both signs)\n"
        "deformed by dip, folds, faults and pull-up near salt; salt bodies (domes, diapirs,\n"
        "sheets, flanks, massive salt) with high impedance and weak chaotic interior;\n"
        "reflectivity convolved with a Ricker wavelet along depth; noise; uint8 around 128.\n"
        "Masks: salt = 1. train.csv: Kaggle run-length encoding (column-major, 1-indexed).\n"
        "depths.csv: invented depths, loosely deeper where there is salt.\n"
    )
    atomic_write_bytes(root / "SYNTHETIC.txt", note.encode())
    return root
