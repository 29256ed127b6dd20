"""Helpers for the serving tests (no tests here): a small real corpus and, until ``matryoshka.retrieval``
lands, a stand-in with the same API (``Stage``, ``PRESETS``, ``Hit``, ``FunnelIndex``...).

The stand-in is exact numpy search per stage; it is installed in ``sys.modules`` only while a test
needs it and only if the real module cannot be imported.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np


def real_retrieval_available() -> bool:
    """True when ``matryoshka.retrieval`` imports (``MATRYOSHKA_FAKE_RETRIEVAL=1`` forces the stand-in)."""
    if os.environ.get("MATRYOSHKA_FAKE_RETRIEVAL") == "1":
        return False
    try:
        from matryoshka.retrieval import PRESETS, FunnelIndex, Stage  # noqa: F401
    except Exception:
        return False
    return True


# -- the stand-in --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    dim: int
    codec: Literal["float32", "float16", "int8", "binary"]
    keep: int

    def __post_init__(self) -> None:
        if self.dim < 0 or self.keep < 1 or self.codec not in ("float32", "float16", "int8", "binary"):
            raise ValueError(f"bad stage {self}")
        if self.codec == "binary" and self.dim % 8:
            raise ValueError("a binary stage needs a dim that is a multiple of 8")


@dataclass
class Hit:
    id: str
    score: float
    text: str | None


def parse_stages(spec: str) -> list[Stage]:
    out = []
    for part in spec.split(","):
        dim, codec, keep = part.split(":")
        out.append(Stage(0 if dim == "full" else int(dim), codec, int(keep)))  # type: ignore[arg-type]
    return out


FULL = 0
PRESETS: dict[str, list[Stage]] = {
    "exact": [Stage(FULL, "float32", 10)],
    "funnel": [Stage(64, "float32", 1000), Stage(FULL, "float32", 10)],
    "binary": [Stage(256, "binary", 1000), Stage(FULL, "float32", 10)],
}


class FakeFunnelIndex:
    """Exact per-stage search over float32 vectors; codecs are simulated (binary = sign agreement)."""

    def __init__(
        self, vectors: np.ndarray, ids: list[str], texts: list[str] | None, model_name: str, stages: list[Stage] | None
    ):
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.ids, self.texts, self.model_name = list(ids), texts, model_name
        self.dim = int(self.vectors.shape[1])
        self.stages = list(stages or PRESETS["exact"])

    @classmethod
    def from_vectors(cls, vectors, ids, texts=None, model_name="", stages=None, storage="float32"):  # noqa: ANN001, ANN206
        return cls(vectors, ids, texts, model_name, stages)

    def __len__(self) -> int:
        return len(self.ids)

    def _scores(self, query: np.ndarray, rows: np.ndarray, stage: Stage) -> np.ndarray:
        docs = self.vectors[rows, : stage.dim]
        docs = docs / np.maximum(np.linalg.norm(docs, axis=1, keepdims=True), 1e-12)
        q = query[: stage.dim] / max(float(np.linalg.norm(query[: stage.dim])), 1e-12)
        if stage.codec == "binary":
            return ((docs > 0) == (q > 0)).sum(axis=1).astype(np.float32)
        return docs @ q

    def search_with_timings(self, queries, k=10, stages=None):  # noqa: ANN001, ANN201
        stages = [Stage(s.dim or self.dim, s.codec, s.keep) for s in (stages or self.stages)]
        if any(b.keep > a.keep for a, b in zip(stages[:-2], stages[1:-1])):
            raise ValueError("keeps must not grow from stage to stage")
        for stage in stages:
            if stage.dim > self.dim or stage.dim < 1:
                raise ValueError(f"stage dim {stage.dim} out of range")
        stages[-1] = Stage(stages[-1].dim, stages[-1].codec, k)
        all_hits, all_timings = [], []
        for query in np.atleast_2d(np.asarray(queries, dtype=np.float32)):
            rows = np.arange(len(self.ids))
            timings, scores = [], np.zeros(0)
            for stage in stages:
                started = time.perf_counter()
                candidates = len(rows)
                scores = self._scores(query, rows, stage)
                order = np.argsort(-scores, kind="stable")[: stage.keep]
                rows, scores = rows[order], scores[order]
                timings.append(
                    {
                        "dim": stage.dim,
                        "codec": stage.codec,
                        "keep": stage.keep,
                        "candidates": candidates,
                        "seconds": time.perf_counter() - started,
                    }
                )
            all_hits.append(
                [Hit(self.ids[r], float(s), self.texts[r] if self.texts else None) for r, s in zip(rows, scores)]
            )
            all_timings = timings
        return all_hits, all_timings

    def search(self, queries, k=10, stages=None):  # noqa: ANN001, ANN201
        return self.search_with_timings(queries, k, stages)[0]


def fake_retrieval_module() -> types.ModuleType:
    module = types.ModuleType("matryoshka.retrieval")
    module.Stage, module.Hit, module.PRESETS, module.FULL = Stage, Hit, PRESETS, FULL  # type: ignore[attr-defined]
    module.parse_stages, module.FunnelIndex = parse_stages, FakeFunnelIndex  # type: ignore[attr-defined]
    return module


@contextlib.contextmanager
def retrieval_module() -> Iterator[types.ModuleType]:
    """Yield ``matryoshka.retrieval``: the real one if it imports, else the stand-in (removed afterwards)."""
    if real_retrieval_available():
        import matryoshka.retrieval as real

        yield real
        return
    saved = sys.modules.get("matryoshka.retrieval")
    sys.modules["matryoshka.retrieval"] = fake = fake_retrieval_module()
    try:
        yield fake
    finally:
        if saved is None:
            sys.modules.pop("matryoshka.retrieval", None)
        else:
            sys.modules["matryoshka.retrieval"] = saved


# -- a small real corpus ---------------------------------------------------------------------------------


def wordnet_sample(n: int = 300) -> tuple[list[str], list[str]]:
    """``n`` real WordNet glosses, ids with their lemmas: from Debian's files or the staged JSON-lines copy."""
    from matryoshka.data.wordnet import JSONL_RELATIVE, find_source, load_glosses

    roots = [os.environ.get("MATRYOSHKA_DATA"), str(Path(__file__).resolve().parents[2] / "shared" / "data")]
    for root in roots:
        if root and (Path(root) / JSONL_RELATIVE).exists():
            return load_glosses(n, Path(root) / JSONL_RELATIVE)
    return load_glosses(n, find_source())
