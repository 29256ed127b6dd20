"""Progress over a long encoding: a rich bar on a terminal, a line per tenth when piped or logged."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matryoshka.models.loading import AnyModel

__all__ = ["encode_chunks", "piped_progress", "progress"]


def piped_progress(console: Any, total: int) -> Callable[[int], None]:
    """``report(done)``: a line ``encoded N/M`` every tenth of ``total`` when ``console`` is no terminal
    (piped or logged, where a rich progress bar does not draw); nothing on a terminal."""
    reported = [0]

    def report(done: int) -> None:
        if not console.is_terminal and (done - reported[0] >= max(total // 10, 1) or done == total):
            console.print(f"encoded {done:,}/{total:,}", highlight=False)
            reported[0] = done

    return report


class progress:
    """A rich progress bar over documents written (a no-op when hidden); yields an ``advance(n)``.

    When stderr is not a terminal (piped, logged) the bar does not draw, so a line ``encoded N/M`` is
    printed every tenth instead, as ``index build`` prints it.
    """

    def __init__(self, total: int, show: bool, label: str = "encoding") -> None:
        self.total, self.show, self.label = total, show, label
        self._bar: Any = None

    def __enter__(self) -> Any:
        if not self.show:
            return lambda n: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        columns = (TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self._bar = Progress(*columns, console=console, transient=True)
        self._bar.__enter__()
        task = self._bar.add_task("encoding", total=self.total)
        report = piped_progress(console, self.total)
        done = [0]

        def advance(n: int) -> None:
            self._bar.advance(task, n)
            done[0] += n
            report(done[0])

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def encode_chunks(
    model: AnyModel, texts: Sequence[str], batch_size: int = 64, on_progress: Any = None
) -> np.ndarray:
    """Full-size unit vectors of ``texts``, encoded a few batches at a time; ``on_progress(done, total)``
    is called after each chunk (a progress bar's update)."""
    from matryoshka.embeddings.vectors import encode
    from matryoshka.models.loading import model_dimension

    if not texts:
        return np.zeros((0, model_dimension(model)), dtype=np.float32)
    # A few batches per chunk: long enough for sentence-transformers to sort texts by length, short
    # enough that progress moves every few seconds.
    chunk = batch_size * 4
    parts = []
    for start in range(0, len(texts), chunk):
        batch = list(texts[start : start + chunk])
        parts.append(encode(model, batch, batch_size=batch_size, show_progress_bar=False))
        if on_progress is not None:
            on_progress(start + len(batch), len(texts))
    return np.concatenate(parts)
