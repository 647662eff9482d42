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
_STRIP = 256  # rows per median strip: (N, C, 256, W) float32 at a time
_SIGMA_STEP = 4  # sigma_b from every 4th pixel along each axis: 1/16 of the tile is plenty for a per-band spread


def day_number(when: date) -> int:
    """Days since 1970-01-01 (the unit of ``last_valid``)."""
    day = when.date() if isinstance(when, datetime) else when
    return (day - _EPOCH).days


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

    def median(self, rows: slice | None = None) -> np.ndarray:
        """``(C, h, W)`` float32 per-pixel median of the filled slots (rows ``rows``, default all, computed in
        strips of ``_STRIP`` rows to bound memory); 0 where never observed."""
        if rows is None:
            height = self.count.shape[0]
            return np.concatenate(
                [self._median(slice(r, min(r + _STRIP, height))) for r in range(0, height, _STRIP)] or
                [self._median(slice(0, 0))], axis=1)
        return self._median(rows)

    def _median(self, rows: slice) -> np.ndarray:
        n = self.obs.shape[0]
        if n == 1:
            return self.obs[0, :, rows].astype(np.float32)
        k = np.minimum(self.count[rows], n)[None]  # (1, h, W) filled slots
        obs = self.obs[:, :, rows].astype(np.float32)  # (N, C, h, W)
        filled = np.arange(n)[:, None, None, None] < k[None]  # (N, 1, h, W)
        if n <= 4:  # closed forms: median of 1..4 values from their sum, min and max (no sort)
            total = np.where(filled, obs, 0.0).sum(axis=0)
            seen = k > 0
            low = np.where(seen, np.where(filled, obs, np.inf).min(axis=0), 0.0)  # never observed: 0, not inf
            high = np.where(seen, np.where(filled, obs, -np.inf).max(axis=0), 0.0)
            out = np.select(
                [k == 1, k == 2, k == 3, k == 4],
                [total, total / 2, total - low - high, (total - low - high) / 2], default=0.0,
            )
            return out.astype(np.float32)
        obs = np.where(filled, obs, np.inf)
        obs.sort(axis=0)  # unfilled slots sort last
        lo = np.maximum((k - 1) // 2, 0)[None]  # (1, 1, h, W)
        hi = np.maximum(k // 2, 0)[None]
        shape = (1, obs.shape[1], *k.shape[1:])
        a = np.take_along_axis(obs, np.broadcast_to(lo, shape), axis=0)[0]  # (C, h, W)
        b = np.take_along_axis(obs, np.broadcast_to(hi, shape), axis=0)[0]
        return np.where(k > 0, (a + b) / 2, 0.0).astype(np.float32)  # even count: mean of the two middle values

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
        slot = self.count % n  # (H, W)
        for s in range(n):
            where = valid & (slot == s)
            if where.any():
                np.copyto(self.obs[s], image, where=where[None])  # (H, W) -> (1, H, W) over bands
                self.dirty.add(s)
        self.count[valid] += 1
        self.last_valid[valid] = day
        self.version += 1
        self.sigma = self._sigma()

    def _sigma(self) -> np.ndarray:
        sub = slice(None, None, _SIGMA_STEP)
        med = self.median(rows=sub)[:, :, sub]  # (C, h/4, W/4)
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
        obs = np.stack([np.load(p) for p in slots])  # N x (C, H, W) -> (N, C, H, W)
        return cls(version=int(meta.pop("version")), meta=meta, obs=obs, **arrays)
