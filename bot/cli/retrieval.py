"""``loraloop retrieval …``: what the bot would retrieve for a question and why, and rebuilding the index.

Both build the index from the database as the bot does at start (bot/retrieval.py), with the same settings
(scope, embed_model, k, budget). The running bot keeps its own index in memory; ``rebuild`` stores the vectors it
computes, so the bot's next start (and its periodic sync) reuses them instead of embedding again.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from bot.cli.common import Community, console, fail, open_ollama, open_store, print_json, settings
from bot.retrieval import Retriever, SyncReport
from bot.settings import Settings
from data.retrieval import Hit, RetrievalError
from data.vectors import delete_vectors

app = typer.Typer(help="What the bot retrieves for a question (and why), and rebuilding its index.",
                  no_args_is_help=True)

_PREVIEW = 60


def _preview(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _PREVIEW else flat[:_PREVIEW - 1] + "…"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _embeddings(config: Settings, retriever: Retriever) -> str:
    if not config.embed_model:
        return "off (no embed_model: lexical only)"
    return f"{config.embed_model}: {'working' if retriever.embedding_working else 'failing, lexical only'}"


@app.command("query")
def query(
    text: Annotated[str, typer.Argument(help="A question as a user would ask it.")],
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object: every hit with its scores.")] = False,
    community: Community = None,
) -> None:
    """The pairs a chat turn with TEXT would be given (scope, k and budget from the settings), with their scores:
    normalised BM25 (lexical), cosine (dense), their ranks and the fused score, and the 👍/👎 of answers that
    used each pair."""
    config = settings()
    if config.retrieval_scope == "off":
        fail("retrieval is off (retrieval_scope: off): chats are answered without expert answers")

    async def run() -> tuple[SyncReport, list[Hit], dict[int, tuple[int, int]], str]:
        async with open_store(config, community) as store, open_ollama(config, timeout_s=30) as ollama:
            retriever = Retriever(config, store, ollama)
            report = await retriever.sync()
            hits = await retriever.search(text)
            return report, hits, await store.pair_feedback([h.example_id for h in hits]), _embeddings(config,
                                                                                                     retriever)

    try:
        report, hits, feedback, embeddings = asyncio.run(run())
    except RetrievalError as exc:
        fail(str(exc))
    if json_out:
        rows: list[dict[str, Any]] = []
        for hit in hits:
            up, down = feedback[hit.example_id]
            rows.append({**hit.to_dict(), "thumbs_up": up, "thumbs_down": down})
        print_json({"query": text, "scope": config.retrieval_scope, "indexed": report.indexed,
                    "in_scope": report.allowed if report.allowed is not None else report.indexed,
                    "k": config.retrieval_k, "max_chars": config.retrieval_max_chars, "embeddings": embeddings,
                    "hits": rows})
        return
    in_scope = report.allowed if report.allowed is not None else report.indexed
    console.print(f"{report.indexed} approved pairs indexed, {in_scope} in scope ({config.retrieval_scope}); "
                  f"embeddings {escape(embeddings)}", highlight=False)
    if not hits:
        console.print("Nothing relevant enough: the chat would get no expert answers.")
        return
    table = Table(title=f"{len(hits)} expert answer{'s' if len(hits) != 1 else ''} for {escape(_preview(text))!r}")
    for column in ("id", "fused", "lexical (rank)", "dense (rank)", "👍/👎", "question", "answer"):
        table.add_column(column)
    for hit in hits:
        up, down = feedback[hit.example_id]
        table.add_row(f"#{hit.example_id}", f"{hit.score:.4f}", f"{_fmt(hit.lexical)} ({hit.lexical_rank or '—'})",
                      f"{_fmt(hit.dense)} ({hit.dense_rank or '—'})", f"{up}/{down}", escape(_preview(hit.question)),
                      escape(_preview(hit.answer)))
    console.print(table)


@app.command("rebuild")
def rebuild(
    prune: Annotated[bool, typer.Option(help="Delete stored vectors of other embedding models.")] = False,
    community: Community = None,
) -> None:
    """Build the index from the database, embedding (with embed_model) the pairs that have no stored vector yet."""
    config = settings()

    async def run() -> tuple[SyncReport, int, int, str]:
        async with open_store(config, community) as store, open_ollama(config, timeout_s=120) as ollama:
            retriever = Retriever(config, store, ollama)
            report = await retriever.rebuild()
            pruned = await delete_vectors(store, keep_model=config.embed_model) if prune else 0
            index = retriever.index
            with_vectors = len(index) - len(index.without_vectors()) if index is not None else 0
            return report, with_vectors, pruned, _embeddings(config, retriever)

    try:
        report, with_vectors, pruned, embeddings = asyncio.run(run())
    except RetrievalError as exc:
        fail(str(exc))
    in_scope = report.allowed if report.allowed is not None else report.indexed
    console.print(f"Indexed {report.indexed} approved pairs ({with_vectors} with vectors; embeddings "
                  f"{escape(embeddings)}); {in_scope} in scope ({config.retrieval_scope})."
                  + (f" Deleted {pruned} vectors of other models." if prune else ""), highlight=False)
