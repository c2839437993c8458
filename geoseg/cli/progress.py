"""Progress bars: only the CLI draws them; the library reports through callbacks."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


class TileProgress:
    """A tqdm bar driven by ``update(done, total)`` callbacks."""

    def __init__(self, desc: str, *, disable: bool = False, unit: str = "tile") -> None:
        self._bar: Any = None
        self._desc = desc
        self._disable = disable
        self._unit = unit

    def update(self, done: int, total: int) -> None:
        if self._disable:
            return
        if self._bar is None:
            self._bar = tqdm(
                total=total,
                desc=self._desc,
                unit=self._unit,
                leave=False,
                dynamic_ncols=True,
                disable=None,
            )
        self._bar.n = done
        self._bar.refresh()

    def __enter__(self) -> TileProgress:
        return self

    def close(self) -> None:
        """Close the bar (again: no-op); a later update would open a new one."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __exit__(self, *exc: object) -> None:
        self.close()
