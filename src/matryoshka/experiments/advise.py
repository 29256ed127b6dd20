"""Pick the cheapest funnel that keeps retrieval quality: measure nDCG@k, speed and memory per config.

The advisor encodes a BEIR-style data set once, indexes it, and runs exact full-dimension search
and every candidate funnel over all its queries. A config *meets the target* when its nDCG@k is at
least ``target`` × the exact nDCG@k; the advice is the one that scans the fewest bytes per vector
in its first stage (then the fastest).

Example:
    >>> report = advise(load_model(), load_beir("scifact"), dims=[384, 128, 64, 32])
    >>> rich.print(report.table())   # every config; the advice in the caption
    >>> report.chosen.stages          # pass to FunnelIndex.search or save as the index default
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table

from matryoshka.data.beir import BeirDataset
from matryoshka.embeddings.vectors import check_dim
from matryoshka.errors import InputError
from matryoshka.evaluation.retrieval import encode_dataset, ranx_scores
from matryoshka.indexes.faiss.index import FunnelIndex
from matryoshka.retrieval.protocol import VectorIndex
from matryoshka.retrieval.stages import (
    FULL,
    Stage,
    bytes_per_vector,
    format_stages,
    resolve_stages,
)
from matryoshka.retrieval.types import Hit

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

#: Shortlist sizes tried for every first-stage dim and codec.
SHORTLISTS = (100, 200, 400, 1000)
#: First-stage codecs tried.
CODECS = ("float32", "binary", "int8")


@dataclass
class AdviceRow:
    """One measured config.

    Attributes:
        name: the stage spec, e.g. ``"64:binary:400,full:float32:10"``.
        ndcg: nDCG@k over the data set's judged queries.
        relative: ``ndcg`` divided by the exact full-dimension nDCG@k.
        overlap: fraction of the exact top-k that this config also returns.
        qps: queries per second, all queries in one batch, best of the timed repeats.
        scan_bytes: bytes per vector the first stage scans.
        memory_bytes: bytes per vector held in memory: the stored full vector plus derived views.
    """

    name: str
    stages: list[Stage]
    ndcg: float
    relative: float
    overlap: float
    qps: float
    scan_bytes: int
    memory_bytes: int
    meets_target: bool

    def to_dict(self) -> dict[str, Any]:
        keys = ("name", "ndcg", "relative", "overlap", "qps", "scan_bytes", "memory_bytes", "meets_target")
        return {key: getattr(self, key) for key in keys}


@dataclass
class AdviceReport:
    """All measured configs, the exact baseline and the chosen config (``None`` if none qualifies).

    ``chosen`` scans the fewest bytes per vector in its first stage (what bounds speed and memory
    traffic as the corpus grows); ``fastest`` is the qualifying config with the most queries/s on
    this data set, which on a small corpus can be a different one, or exact search itself.
    """

    dataset: str
    model_name: str
    dim: int
    documents: int
    queries: int
    k: int
    target: float
    exact: AdviceRow
    rows: list[AdviceRow] = field(default_factory=list)
    chosen: AdviceRow | None = None
    fastest: AdviceRow | None = None

    def table(self) -> Table:
        """A rich table of every config, cheapest first stage first; the chosen row is highlighted."""
        table = Table(
            title=f"Funnel advice · {self.dataset} ({self.documents:,} docs, {self.queries:,} queries) · {self.model_name}",
            caption=self._caption(),
        )
        table.add_column("config")
        for column in (f"nDCG@{self.k}", "vs exact", f"overlap@{self.k}", "queries/s", "scan B/vec", "memory B/vec"):
            table.add_column(column, justify="right")
        table.add_column("ok", justify="center")
        for row in self.rows:
            style = "bold green" if row is self.chosen else ("dim" if not row.meets_target else None)
            table.add_row(
                row.name + ("  (exact)" if row is self.exact else ""),
                f"{row.ndcg:.4f}",
                f"{row.relative:.1%}",
                f"{row.overlap:.3f}",
                f"{row.qps:,.0f}",
                f"{row.scan_bytes:,}",
                f"{row.memory_bytes:,}",
                "✓" if row.meets_target else "",
                style=style,
            )
        return table

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the report."""
        return {
            "dataset": self.dataset,
            "model_name": self.model_name,
            "dim": self.dim,
            "documents": self.documents,
            "queries": self.queries,
            "k": self.k,
            "target": self.target,
            "exact": self.exact.to_dict(),
            "chosen": self.chosen.to_dict() if self.chosen else None,
            "fastest": self.fastest.to_dict() if self.fastest else None,
            "rows": [row.to_dict() for row in self.rows],
        }

    def to_markdown(self) -> str:
        """The table as Markdown, with the advice on top."""
        lines = [f"# Funnel advice: {self.dataset}", "", self._caption(), ""]
        lines.append(
            f"| config | nDCG@{self.k} | vs exact | overlap@{self.k} | queries/s | scan B/vec | memory B/vec | ok |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|:-:|")
        for row in self.rows:
            name = f"**{row.name}**" if row is self.chosen else row.name
            lines.append(
                f"| {name} | {row.ndcg:.4f} | {row.relative:.1%} | {row.overlap:.3f} | {row.qps:,.0f} | "
                f"{row.scan_bytes:,} | {row.memory_bytes:,} | {'✓' if row.meets_target else ''} |"
            )
        return "\n".join(lines) + "\n"

    def _caption(self) -> str:
        if self.chosen is None:
            return f"No config reaches {self.target:.0%} of exact nDCG@{self.k} ({self.exact.ndcg:.4f})."
        advice = (
            f"Advice: {self.chosen.name} — nDCG@{self.k} {self.chosen.ndcg:.4f} ({self.chosen.relative:.1%} of exact), "
            f"scans {self.chosen.scan_bytes:,} B/vector instead of {self.exact.scan_bytes:,}, "
            f"{_ratio(self.chosen.qps / self.exact.qps)}× exact queries/s."
        )
        if self.fastest is not None and self.fastest is not self.chosen:
            advice += (
                f" Fastest within the target here: {self.fastest.name} — {self.fastest.relative:.1%} of exact, "
                f"{_ratio(self.fastest.qps / self.exact.qps)}× exact queries/s."
            )
        return advice


def _ratio(value: float) -> str:
    """A speed ratio with two significant digits below 1 (0.36×) and one decimal above (14.5×)."""
    return f"{value:.2f}" if value < 1 else f"{value:.1f}"


def advise(
    model: SentenceTransformer,
    dataset: BeirDataset,
    dims: Sequence[int],
    configs: Sequence[Sequence[Stage]] | None = None,
    target: float = 0.99,
    k: int = 10,
    shortlists: Sequence[int] = SHORTLISTS,
    repeats: int = 3,
    batch_size: int = 64,
    model_name: str = "",
    show_progress: bool = False,
) -> AdviceReport:
    """Measure exact search and candidate funnels on ``dataset`` and choose the cheapest that keeps quality.

    Args:
        model: the embedding model; corpus and queries are encoded once at full size.
        dataset: corpus, queries and qrels (see :func:`matryoshka.data.beir.load_beir`).
        dims: first-stage prefix dims to try when ``configs`` is not given.
        configs: funnels to measure instead of the generated ones (exact is always measured).
            Generated: for each dim, plain truncated exact search, and a ``float32``/``binary``/``int8``
            shortlist of each size in ``shortlists`` re-ranked at full size.
        target: fraction of exact nDCG@k a config must keep to qualify.
        k: cut-off of nDCG and of the returned hits.
        repeats: timed runs per config after one warm-up; the fastest counts.

    Returns:
        An :class:`AdviceReport`; print ``report.table()`` with rich.
    """
    if not 0 < target <= 1:
        raise InputError(f"target must be in (0, 1], got {target}")
    doc_ids, docs, query_ids, queries = encode_dataset(
        model, dataset, batch_size=batch_size, show_progress_bar=show_progress
    )
    index = FunnelIndex.from_vectors(docs, doc_ids, model_name=model_name)
    full = index.dim
    exact_stages = [Stage(FULL, "float32", k)]
    if configs is None:
        configs = candidate_configs([check_dim(d, full) for d in dims], full, k, len(index), shortlists)
    unique = {format_stages(resolve_stages(c, full, k, len(index))): list(c) for c in configs}
    exact_name = format_stages(resolve_stages(exact_stages, full, k, len(index)))
    unique.pop(exact_name, None)

    metric = f"ndcg@{k}"
    exact_hits, exact_seconds = _timed_search(index, queries, k, exact_stages, repeats)
    exact_ndcg = ranx_scores(dataset.qrels, _run(query_ids, exact_hits), [metric])[metric]
    exact_top = [{h.id for h in hits} for hits in exact_hits]

    def row(name: str, stages: list[Stage], hits: list, seconds: float) -> AdviceRow:
        ndcg = ranx_scores(dataset.qrels, _run(query_ids, hits), [metric])[metric]
        relative = ndcg / exact_ndcg if exact_ndcg > 0 else 1.0
        overlap = float(
            np.mean([len(top & {h.id for h in found}) / max(len(top), 1) for top, found in zip(exact_top, hits)])
        )
        return AdviceRow(
            name=name,
            stages=stages,
            ndcg=ndcg,
            relative=relative,
            overlap=overlap,
            qps=len(queries) / max(seconds, 1e-9),
            scan_bytes=bytes_per_vector(stages[0], full),
            memory_bytes=memory_per_vector(stages, full, index.storage),
            meets_target=ndcg >= target * exact_ndcg - 1e-12,
        )

    exact = row(exact_name, exact_stages, exact_hits, exact_seconds)
    rows = [exact]
    items: Iterable[tuple[str, list[Stage]]] = list(unique.items())
    if show_progress:
        from rich.progress import track

        items = track(items, description="Measuring funnels")
    for name, stages in items:
        hits, seconds = _timed_search(index, queries, k, stages, repeats)
        rows.append(row(name, stages, hits, seconds))
    rows.sort(key=lambda r: (r.scan_bytes, -r.ndcg, -r.qps))
    qualified = [r for r in rows if r.meets_target]
    chosen = min(qualified, key=lambda r: (r.scan_bytes, -r.qps)) if qualified else None
    fastest = max(qualified, key=lambda r: r.qps) if qualified else None
    return AdviceReport(
        dataset=dataset.name,
        model_name=model_name,
        dim=full,
        documents=len(doc_ids),
        queries=len(query_ids),
        k=k,
        target=target,
        exact=exact,
        rows=rows,
        chosen=chosen,
        fastest=fastest,
    )


def candidate_configs(
    dims: Sequence[int], full_dim: int, k: int, count: int, shortlists: Sequence[int] = SHORTLISTS
) -> list[list[Stage]]:
    """Truncated exact search per dim, and each dim × codec × shortlist re-ranked at full size.

    Shortlists not larger than ``k`` or not smaller than ``count`` are skipped (they equal another config).
    """
    configs: list[list[Stage]] = []
    for dim in sorted(set(dims), reverse=True):
        if dim < full_dim:
            configs.append([Stage(dim, "float32", k)])
        for codec in CODECS:
            if (codec == "float32" and dim == full_dim) or (codec == "binary" and dim % 8):
                continue
            for keep in shortlists:
                if k < keep < count:
                    configs.append([Stage(dim, codec, keep), Stage(FULL, "float32", k)])  # type: ignore[arg-type]
    return configs


def memory_per_vector(stages: Sequence[Stage], full_dim: int, storage: str = "float32") -> int:
    """Bytes per vector a funnel keeps in memory: the stored full vector plus each derived view it scans."""
    stored = full_dim * (4 if storage == "float32" else 2)
    views = set()
    first = stages[0]
    if not (first.codec == "float32" and (first.dim or full_dim) == full_dim):
        views.add((first.codec, first.dim or full_dim))
    views |= {("int8", s.dim or full_dim) for s in stages[1:] if s.codec == "int8"}
    return stored + sum(bytes_per_vector(Stage(dim, codec, 1), full_dim) for codec, dim in views)


def _timed_search(
    index: VectorIndex, queries: np.ndarray, k: int, stages: Sequence[Stage], repeats: int
) -> tuple[list[list[Hit]], float]:
    index.prepare(stages)
    index.search(queries[: min(16, len(queries))], k=k, stages=stages)
    best, hits = float("inf"), []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        hits = index.search(queries, k=k, stages=stages)
        best = min(best, time.perf_counter() - start)
    return hits, best


def _run(query_ids: Sequence[str], hits: Sequence[Sequence[Any]]) -> dict[str, dict[str, float]]:
    return {qid: {h.id: h.score for h in found} for qid, found in zip(query_ids, hits)}
