"""A purger that prints what it would purge: the default of the demo."""

from __future__ import annotations

import sys
from typing import TextIO

from django_tiercache.edge.purgers.base import BasePurger, PurgeResult


class ConsolePurger(BasePurger):
    """Writes one line per purge call to standard output (or ``self.stream``)."""

    stream: TextIO | None = None

    def _write(self, line: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(f"[tiercache:{self.name}] {line}\n")
        stream.flush()

    def send_batch(self, keys: list[str], *, soft: bool) -> PurgeResult:
        self._write(f"{'soft ' if soft else ''}purge {len(keys)} key(s): {' '.join(keys)}")
        return PurgeResult(ok=True, keys=tuple(keys))

    def purge_all(self) -> PurgeResult:
        self._write("purge everything")
        return PurgeResult(ok=True)
