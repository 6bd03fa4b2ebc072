"""Dataset loading (BEIR layout, JSONL, HuggingFace datasets) with validation and owner mapping."""

from lethe.data.loaders import (
    Dataset,
    dataset_from_records,
    extract_owners,
    load_beir,
    load_corpus_jsonl,
    load_dataset,
    load_hf,
    load_qrels_tsv,
    load_queries_jsonl,
    load_trec_run,
    resolve_dataset_path,
)

__all__ = [
    "Dataset",
    "dataset_from_records",
    "extract_owners",
    "load_beir",
    "load_corpus_jsonl",
    "load_dataset",
    "load_hf",
    "load_qrels_tsv",
    "load_queries_jsonl",
    "load_trec_run",
    "resolve_dataset_path",
]
