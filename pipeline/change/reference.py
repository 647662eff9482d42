"""The per-tile reference state: a rolling median of the last N clear observations, last-valid dates, band sigma.

Stored as plain ``.npy`` files plus ``reference.json`` under one directory, replaced as a whole (written to a
temporary sibling, then renamed), so a crash never leaves a half-updated reference (docs/change-aware.md §State).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
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

    @classmethod
    def empty(cls, n_obs: int, shape: tuple[int, int, int], dtype: np.dtype, meta: dict[str, Any]) -> ReferenceState:
        """A reference that has seen nothing: every pixel is invalid, so the first scene is all newly valid."""
        c, h, w = shape
        return cls(
            obs=np.zeros((n_obs, c, h, w), dtype), count=np.zeros((h, w), np.int32),
            last_valid=np.full((h, w), NEVER, np.int32), sigma=np.ones(c, np.float32), version=0, meta=dict(meta),
        )

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
        return out

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
        obs = self.obs[:, :, rows].astype(np.float32)  # (N, C, h, W)
        if n == 1:
            return obs[0]
        k = np.minimum(self.count[rows], n)  # (h, W) filled slots
        filled = np.arange(n)[:, None, None] < k[None]  # (N, h, W)
        obs[~np.broadcast_to(filled[:, None], obs.shape)] = np.inf  # unfilled slots sort last
        obs.sort(axis=0)
        lo = np.maximum((k - 1) // 2, 0)[None, None]  # (1, 1, h, W)
        hi = np.maximum(k // 2, 0)[None, None]
        c = obs.shape[1]
        a = np.take_along_axis(obs, np.broadcast_to(lo, (1, c, *k.shape)), axis=0)[0]  # (C, h, W)
        b = np.take_along_axis(obs, np.broadcast_to(hi, (1, c, *k.shape)), axis=0)[0]
        out = np.where(k[None] > 0, (a + b) / 2, 0.0)  # even count: mean of the two middle values
        return out.astype(np.float32)

    def fold(self, image: np.ndarray, valid: np.ndarray, day: int) -> None:
        """Fold one scene in: its valid pixels become the newest observation; invalid pixels keep their old state.

        Args:
            image: ``(C, H, W)`` the scene on the tile grid, dtype of ``obs``.
            valid: ``(H, W)`` bool, the scene's validity mask (docs/change-aware.md §Validity masks).
            day: acquisition day (:func:`day_number`).
        """
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
                self.obs[s][:, where] = image[:, where]
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
        """Write the state to ``directory`` atomically (a complete sibling is renamed over it)."""
        target = Path(directory)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in ("obs", "count", "last_valid", "sigma"):
            np.save(tmp / f"{name}.npy", getattr(self, name))
        (tmp / "reference.json").write_text(json.dumps({"version": self.version, **self.meta}, indent=2))
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)

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
        arrays = {name: np.load(path / f"{name}.npy") for name in ("obs", "count", "last_valid", "sigma")}
        return cls(version=int(meta.pop("version")), meta=meta, **arrays)
