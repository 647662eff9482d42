"""The per-tile reference state: a rolling median of the last N clear observations, last-valid dates, band sigma.

Stored as plain ``.npy`` files plus ``reference.json`` under one directory, replaced as a whole (written to a
temporary sibling, then renamed), so a crash never leaves a half-updated reference (docs/change-aware.md §State).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ReferenceState", "day_number"]

_EPOCH = date(1970, 1, 1)
NEVER = -1  # last-valid day of a pixel never observed clear
_STRIP = 256  # rows per median strip: (C, 256, W) temporaries at a time
_SIGMA_STEP = 4  # sigma_b from every 4th pixel along each axis: 1/16 of the tile is plenty for a per-band spread


def day_number(when: date) -> int:
    """Days since 1970-01-01 (the unit of ``last_valid``)."""
    day = when.date() if isinstance(when, datetime) else when
    return (day - _EPOCH).days


def _median_of(values: np.ndarray) -> np.ndarray:
    """float32 median over axis 0 of ``(k, ...)`` values, k >= 1. Up to four values by a min/max network in the
    stored dtype (no sort, no float copy of the inputs); the two middle values are averaged for an even k."""
    k = values.shape[0]
    if k == 1:
        return values[0].astype(np.float32)
    if k == 2:
        lo, hi = values[0], values[1]
    elif k == 3:
        a, b = np.minimum(values[0], values[1]), np.maximum(values[0], values[1])
        return np.maximum(a, np.minimum(b, values[2], out=b), out=a).astype(np.float32)
    elif k == 4:
        a, b = np.minimum(values[0], values[1]), np.maximum(values[0], values[1])
        c, d = np.minimum(values[2], values[3]), np.maximum(values[2], values[3])
        lo, hi = np.maximum(a, c, out=a), np.minimum(b, d, out=b)  # the second smallest and second largest
    else:
        ordered = np.sort(values.astype(np.float32), axis=0)
        lo, hi = ordered[(k - 1) // 2], ordered[k // 2]
    out = lo.astype(np.float32)
    out += hi
    out *= 0.5
    return out


@dataclass
class ReferenceState:
    """What a tile looked like, per pixel, over its last clear observations.

    Attributes:
        obs: ``(N, C, H, W)`` the last N valid values per pixel, a ring (slot ``count % N`` is written next).
        count: ``(H, W)`` valid observations folded so far (slots ``< min(count, N)`` are filled).
        last_valid: ``(H, W)`` day number (:func:`day_number`) of the last valid observation, ``-1`` for never.
        sigma: ``(C,)`` per-band spread of the reference over the tile (``norm_diff``).
        version: folds so far; ``meta`` holds the grid, bands and history (plain JSON).
    """

    obs: np.ndarray
    count: np.ndarray
    last_valid: np.ndarray
    sigma: np.ndarray
    version: int
    meta: dict[str, Any]
    dirty: set[int] = field(default_factory=set, repr=False)  # ring slots changed since load (rewritten on save)

    @classmethod
    def empty(
        cls, n_obs: int, shape: tuple[int, int, int], dtype: np.dtype, meta: dict[str, Any],
        band_index: list[int] | None = None,
    ) -> ReferenceState:
        """A reference that has seen nothing: every pixel is invalid, so the first scene is all newly valid.

        Args:
            n_obs: observations kept per pixel.
            shape: ``(C, H, W)`` of the scenes.
            dtype: their pixel type.
            meta: plain JSON kept with the state (tile, grid, ...).
            band_index: keep only these channels of each scene (the change score's bands), ``None``: all.
        """
        c, h, w = shape
        kept = c if band_index is None else len(band_index)
        meta = dict(meta) | ({} if band_index is None else {"band_index": [int(i) for i in band_index]})
        return cls(
            obs=np.zeros((n_obs, kept, h, w), dtype), count=np.zeros((h, w), np.int32),
            last_valid=np.full((h, w), NEVER, np.int32), sigma=np.ones(kept, np.float32), version=0, meta=meta,
            dirty=set(range(n_obs)),
        )

    def bands_of(self, image: np.ndarray) -> np.ndarray:
        """The channels of a ``(C, H, W)`` scene this reference keeps."""
        index = self.meta.get("band_index")
        return image if index is None else image[index]

    def grown(self, height: int, width: int) -> ReferenceState:
        """This state on a tile at least ``height`` x ``width`` (a later scene's chips reached further): the new
        pixels have never been observed."""
        n, c, h, w = self.obs.shape
        if height <= h and width <= w:
            return self
        hh, ww = max(h, height), max(w, width)
        out = ReferenceState.empty(n, (c, hh, ww), self.obs.dtype, self.meta)
        out.obs[:, :, :h, :w] = self.obs
        out.count[:h, :w] = self.count
        out.last_valid[:h, :w] = self.last_valid
        out.sigma, out.version = self.sigma, self.version
        return out  # every slot dirty: the grown arrays are new

    @property
    def valid(self) -> np.ndarray:
        """``(H, W)`` pixels with at least one clear observation."""
        return self.count > 0

    def median(self, rows: slice | None = None, cols: slice | None = None) -> np.ndarray:
        """``(C, h, w)`` float32 per-pixel median of the filled slots (rows ``rows`` and columns ``cols``, default all,
        computed in strips of ``_STRIP`` rows to bound memory); 0 where never observed."""
        height, width = self.count.shape
        rows, cols_ = rows or slice(None), cols or slice(None)
        if (rows.step or 1) < 0 or (cols_.step or 1) < 0:
            raise ValueError(f"median(rows={rows}, cols={cols_}): slices must run forward (a positive step)")
        rows = range(height)[rows]
        out = np.empty((self.obs.shape[1], len(rows), len(range(width)[cols_])), np.float32)
        for r in range(0, len(rows), _STRIP):  # strip r covers output rows r .. r + _STRIP
            part = rows[r : r + _STRIP]
            out[:, r : r + len(part)] = self._median(slice(part.start, part.stop, part.step), cols_)
        return out

    def _median(self, rows: slice, cols: slice) -> np.ndarray:
        n = self.obs.shape[0]
        obs = self.obs[:, :, rows, cols]  # (N, C, h, w), a view in the stored dtype
        k = np.minimum(self.count[rows, cols], n)  # (h, w) filled slots
        if k.size == 0:
            return np.zeros(obs.shape[1:], np.float32)
        low, high = int(k.min()), int(k.max())
        # every pixel as if it had `high` observations (the usual case, no gather), then the pixels with fewer
        out = _median_of(obs[:high]) if high > 0 else np.zeros(obs.shape[1:], np.float32)
        for filled in range(low, high):
            where = k == filled  # (h, w)
            if where.any():
                out[:, where] = _median_of(obs[:filled][:, :, where]) if filled else 0.0  # (filled, C, P) -> (C, P)
        return out

    def fold(self, image: np.ndarray, valid: np.ndarray, day: int) -> None:
        """Fold one scene in: its valid pixels become the newest observation; invalid pixels keep their old state.

        Args:
            image: ``(C, H, W)`` the scene on the tile grid, dtype of ``obs`` (all bands: the kept ones are taken).
            valid: ``(H, W)`` bool, the scene's validity mask (docs/change-aware.md §Validity masks).
            day: acquisition day (:func:`day_number`).
        """
        image = self.bands_of(image)
        if image.shape != self.obs.shape[1:] or valid.shape != self.count.shape:
            raise ValueError(
                f"scene {image.shape} / mask {valid.shape} does not match the reference {self.obs.shape[1:]}; the "
                "tile grid changed: start a new --state directory for it."
            )
        n = self.obs.shape[0]
        if valid.any():
            low = int(self.count.min(where=valid, initial=np.iinfo(self.count.dtype).max))
            high = int(self.count.max(where=valid, initial=0))
            if low == high:  # every valid pixel writes the same slot (the usual case): one masked copy
                writes = [(low % n, valid)]
            else:
                slot = self.count % n  # (H, W)
                writes = [(s, valid & (slot == s)) for s in range(n)]
            for s, where in writes:
                if where.any():
                    np.copyto(self.obs[s], image, where=where[None])  # (H, W) -> (1, H, W) over bands
                    self.dirty.add(s)
        np.add(self.count, valid, out=self.count, casting="unsafe")  # +1 where valid
        np.copyto(self.last_valid, day, where=valid)
        self.version += 1
        self.sigma = self._sigma()

    def _sigma(self) -> np.ndarray:
        sub = slice(None, None, _SIGMA_STEP)
        med = self.median(rows=sub, cols=sub)  # (C, H/4, W/4)
        seen = self.valid[sub, sub]
        if not seen.any():
            return np.ones(self.obs.shape[1], np.float32)
        sigma = med[:, seen].std(axis=1).astype(np.float32)  # (C, P) -> (C,)
        return np.where(sigma > 0, sigma, 1.0).astype(np.float32)

    # ------------------------------------------------------------------------------------------------- storage

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the state to ``directory`` atomically (a complete sibling is renamed over it). Ring slots this state
        did not change are hard-linked from the previous copy, so a fold rewrites about one slot, not N."""
        target = Path(directory)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for s in range(self.obs.shape[0]):
            old = target / f"obs_{s}.npy"
            if s not in self.dirty and old.is_file():
                try:
                    os.link(old, tmp / old.name)
                    continue
                except OSError:  # a filesystem without hard links: write it
                    pass
            np.save(tmp / old.name, self.obs[s])
        for name in ("count", "last_valid", "sigma"):
            np.save(tmp / f"{name}.npy", getattr(self, name))
        (tmp / "reference.json").write_text(json.dumps({"version": self.version, **self.meta}, indent=2))
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        self.dirty = set()

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ReferenceState:
        """Read a state written by :meth:`save`.

        Raises:
            FileNotFoundError: ``directory`` holds no reference (the tile's first run computes everything).
        """
        path = Path(directory)
        if not (path / "reference.json").is_file():
            raise FileNotFoundError(f"{path} holds no reference state (no reference.json)")
        meta = json.loads((path / "reference.json").read_text())
        arrays = {name: np.load(path / f"{name}.npy") for name in ("count", "last_valid", "sigma")}
        slots = sorted(path.glob("obs_*.npy"), key=lambda p: int(p.stem.split("_")[1]))
        if not slots:
            raise FileNotFoundError(f"{path} holds no observation slots (obs_*.npy); delete it to start the tile anew")
        first = np.load(slots[0], mmap_mode="r")
        obs = np.empty((len(slots), *first.shape), first.dtype)  # N x (C, H, W) -> (N, C, H, W), one copy each
        for s, slot in enumerate(slots):
            obs[s] = np.load(slot, mmap_mode="r")
        return cls(version=int(meta.pop("version")), meta=meta, obs=obs, **arrays)
