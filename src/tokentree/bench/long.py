"""The long-context suite: Spec-Bench's RAG questions and news articles, padded with other
documents to a few thousand tokens (what a RAG or summarization request looks like in use).

Each prompt lists numbered documents and ends with a task on one of them: ``rag-<L>k`` answers a
Spec-Bench RAG question from its own passages (placed among other passages), ``summary-<L>k``
summarizes one news article among others. ``L`` thousand tokens is the size, at
``CHARS_PER_TOKEN`` characters per token (English prose runs 4 to 4.5 with the Qwen and Llama
tokenizers, so a prompt is at most about L thousand tokens). Built only from the first
``BENCH_POOL`` records of each category, which head training never reads (see
:mod:`tokentree.tools.train_head.data`), deterministically: prompt j places its document at slot
j mod k.
"""

from __future__ import annotations

from .prompt import BenchPrompt

LONG_SIZES = (4, 8, 16)  # thousands of tokens
PROMPTS_PER_SIZE = 10
CHARS_PER_TOKEN = 4
BENCH_POOL = 20  # records of each category the suite draws from
RAG_TASK = "Answer the question using the documents above.\n\nQuestion: {question}"
SUMMARY_TASK = "Summarize document {slot} above in a few sentences."


def _rag_parts(prompt: BenchPrompt) -> tuple[str, str]:
    """A Spec-Bench RAG record's (passages, question): the question is its last line."""
    passages, _, question = prompt.turns[0].rpartition("\n")
    return passages.strip(), question.strip()


def _article(prompt: BenchPrompt) -> str:
    return prompt.turns[0].removeprefix("Summarize:").strip()


def _fill(own: str, others: list[str], budget: int, slot_seed: int) -> tuple[list[str], int]:
    """Documents within ``budget`` characters: ``own`` plus as many of ``others`` as fit, in
    order; ``own`` goes to slot ``slot_seed`` mod their count. Returns (documents, own's index)."""
    chosen, used = [], len(own)
    for text in others:
        if used + len(text) > budget:
            break
        chosen.append(text)
        used += len(text)
    slot = slot_seed % (len(chosen) + 1)
    return chosen[:slot] + [own] + chosen[slot:], slot


def _numbered(documents: list[str]) -> str:
    return "".join(f"Document {i}:\n{text}\n\n" for i, text in enumerate(documents, start=1))


def long_prompts(rag: list[BenchPrompt], news: list[BenchPrompt]) -> list[BenchPrompt]:
    """The suite from Spec-Bench's ``rag`` and ``summarization`` records (in file order)."""
    rag, news = rag[:BENCH_POOL], news[:BENCH_POOL]
    passages = [_rag_parts(p)[0] for p in rag]
    articles = [_article(p) for p in news]
    pool = passages + articles
    prompts = []
    for size in LONG_SIZES:
        budget = size * 1000 * CHARS_PER_TOKEN
        for j in range(PROMPTS_PER_SIZE):
            own, question = _rag_parts(rag[j])
            others = [t for t in pool[j + 1 :] + pool[: j + 1] if t != own]
            documents, _ = _fill(own, others, budget, j)
            prompts.append(
                BenchPrompt(
                    f"long/rag-{size}k/{rag[j].id}",
                    f"rag-{size}k",
                    (_numbered(documents) + RAG_TASK.format(question=question),),
                )
            )
        for j in range(PROMPTS_PER_SIZE):
            own = articles[j]
            others = [t for t in articles[j + 1 :] + passages + articles[:j] if t != own]
            documents, slot = _fill(own, others, budget, j)
            prompts.append(
                BenchPrompt(
                    f"long/summary-{size}k/{news[j].id}",
                    f"summary-{size}k",
                    (_numbered(documents) + SUMMARY_TASK.format(slot=slot + 1),),
                )
            )
    return prompts
