"""Training bi-encoders from a teacher: the DSE and LG-ANNA-style recipes (METHODS.md cards 1, 2).

Both recipes train a sentence-transformers model whose score is a dot product of normalised
embeddings (FAISS inner-product compatible) on mined examples ``(query, positive, negatives)``
carrying the teacher's scores for ``[positive, *negatives]``:

* ``dse``: ``alpha * MarginMSE(student margins, teacher margins)`` (or pointwise MSE) ``+ (1 - alpha) *
  InfoNCE`` — the squared-error distillation of DSE with the ``dot`` head;
* ``lganna``: an instruction on the query side (sentence-transformers prompt, optionally preceded by
  few-shot (query, positive) examples), ``KL(softmax(t/tau_t) || softmax(s/tau))`` over the candidate
  list (``DistillKLDivLoss``) ``+`` InfoNCE with the margin-filtered negatives.

The losses are sentence-transformers' own (``MarginMSELoss``, ``DistillKLDivLoss``,
``MultipleNegativesRankingLoss``), applied to embeddings computed once per step.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lethe.training.elr import ELRConfig
from lethe.training.pools import MinedExample

#: ``contrastive``: InfoNCE over qrels positives and pool negatives, no teacher
#: (``lethe.pipelines.train.fit_bi_encoder``)
RECIPES = ("dse", "lganna", "contrastive")


@dataclass
class EmbedTrainConfig:
    """Settings of one student training run (every field is recorded in the manifest)."""

    recipe: str = "dse"
    epochs: float = 1.0
    lr: float = 2e-5
    batch_size: int = 16
    max_length: int = 256
    warmup: float = 0.1
    weight_decay: float = 0.01
    alpha: float = 0.5          # dse: weight of the distillation term, (1 - alpha) on InfoNCE
    pointwise: bool = False     # dse: pointwise MSE on scores instead of MarginMSE
    teacher_scale: float = 1.0  # dse: student scores are compared with teacher_scale * t
    teacher_sigmoid: bool = True  # teacher scores are logits (dse distils sigmoid(t)); False: already in [0, 1]
    tau: float = 0.05           # student temperature (KL) ; InfoNCE uses scale 1/tau
    tau_teacher: float | None = None  # teacher temperature (KL); None: 1 for logits, 0.1 for [0,1] scores
    kl_weight: float = 1.0      # lganna: weight of the KL term (InfoNCE weight 1)
    instruction: str | None = None
    pool_instruction: bool = False  # mean pooling: include the instruction's tokens (default: excluded)
    n_examples: int = 0         # lganna: few-shot (query, positive) examples in the query prompt
    example_chars: int = 200
    seed: int = 42
    max_seconds: float | None = None
    elr: ELRConfig | None = None  # contrastive: early-learning regularisation for noisy labels (lethe.training.elr)

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; choose from {list(RECIPES)}")
        if self.elr is not None and self.recipe != "contrastive":
            raise ValueError(f"ELR regularises training on labels: the contrastive recipe, not {self.recipe!r} "
                             "(a distillation recipe follows a teacher's scores)")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbedTrainConfig:
        """The settings a manifest recorded (unknown keys ignored; ``elr`` from its dict)."""
        kw = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if isinstance(kw.get("elr"), dict):
            kw["elr"] = ELRConfig(**kw["elr"])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings."""
        return asdict(self)


@dataclass
class TrainResult:
    """What a training run did."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def query_prompt(cfg: EmbedTrainConfig, examples: Sequence[tuple[str, str]] = ()) -> str | None:
    """The query-side prefix: optional few-shot examples, then ``Instruct: ...\\nQuery: ``."""
    if not cfg.instruction:
        return None
    shots = "".join(f"<instruct>{cfg.instruction}\n<query>{q}\n<response>{p}\n\n" for q, p in examples)
    return f"{shots}Instruct: {cfg.instruction}\nQuery: "


def few_shot_pool(examples: Sequence[MinedExample], queries: Mapping[str, str], texts: Mapping[str, str],
                  chars: int) -> list[tuple[str, str]]:
    """(query, truncated positive) pairs to draw in-context examples from."""
    return [(queries[e.query_id], texts[e.positive][:chars]) for e in examples]


def train_bi_encoder(model: Any, examples: Sequence[MinedExample], queries: Mapping[str, str],
                     texts: Mapping[str, str], cfg: EmbedTrainConfig,
                     on_step: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Train a SentenceTransformer in place on mined examples with the configured recipe."""
    from lethe.training.loop import LoopSettings, epoch_batches, run_loop

    rng = random.Random(cfg.seed)
    losses = _losses(model, cfg)
    steps = max(1, math.ceil(len(examples) * cfg.epochs / cfg.batch_size))
    shots = few_shot_pool(examples, queries, texts, cfg.example_chars) if cfg.n_examples else []
    if cfg.instruction:
        set_prompt_pooling(model, cfg.pool_instruction)
    batches = epoch_batches(examples, cfg.batch_size, rng)
    settings = LoopSettings(steps, cfg.lr, cfg.weight_decay, cfg.warmup, decay=True, grouped_decay=True,
                            seed=cfg.seed, max_seconds=cfg.max_seconds)
    run = run_loop(model, lambda _: _step_loss(model, next(batches), queries, texts, cfg, losses, shots, rng),
                   settings, on_step)
    return TrainResult(run.losses, run.seconds, run.steps)


def _losses(model: Any, cfg: EmbedTrainConfig) -> dict[str, Any]:
    from sentence_transformers.sentence_transformer import losses as L
    from sentence_transformers.util import cos_sim, pairwise_dot_score

    return {
        "infonce": L.MultipleNegativesRankingLoss(model, scale=1.0 / cfg.tau, similarity_fct=cos_sim),
        "margin_mse": L.MarginMSELoss(model, similarity_fct=pairwise_dot_score),
        "kl": L.DistillKLDivLoss(model, similarity_fct=pairwise_dot_score, student_temperature=cfg.tau,
                                 teacher_temperature=cfg.tau_teacher or (1.0 if cfg.teacher_sigmoid else 0.1)),
    }


def _step_loss(model: Any, batch: Sequence[MinedExample], queries: Mapping[str, str], texts: Mapping[str, str],
               cfg: EmbedTrainConfig, losses: dict[str, Any], shots: list[tuple[str, str]],
               rng: random.Random):  # noqa: ANN202
    import torch

    k = len(batch[0].negatives)
    if shots:  # a different prefix per query: the prefix is part of the text (and of the pooling)
        q_texts, prompt = [_with_prompt(queries[e.query_id], cfg, shots, rng) for e in batch], None
    else:  # one prompt for the batch, passed as such so pooling can leave its tokens out (as at inference)
        q_texts, prompt = [queries[e.query_id] for e in batch], query_prompt(cfg)
    columns = [[texts[e.positive] for e in batch]] + [[texts[e.negatives[j]] for e in batch] for j in range(k)]
    emb = [embed_texts(model, q_texts, cfg.max_length, prompt)]
    emb += [embed_texts(model, col, cfg.max_length) for col in columns]
    teacher = torch.tensor([e.teacher for e in batch], dtype=emb[0].dtype)
    infonce = losses["infonce"].compute_loss_from_embeddings(emb, None)
    if cfg.alpha >= 1.0 and cfg.recipe == "dse":
        infonce = infonce.detach() * 0.0
    if cfg.recipe == "lganna":
        return infonce + cfg.kl_weight * losses["kl"].compute_loss_from_embeddings(emb, teacher)
    if cfg.teacher_sigmoid:
        teacher = torch.sigmoid(teacher)
    if cfg.pointwise:
        student = torch.stack([(emb[0] * e).sum(-1) for e in emb[1:]], dim=1)
        distill = torch.nn.functional.mse_loss(student, cfg.teacher_scale * teacher)
    else:
        distill = losses["margin_mse"].compute_loss_from_embeddings(emb, cfg.teacher_scale * teacher)
    return cfg.alpha * distill + (1.0 - cfg.alpha) * infonce


def _with_prompt(query: str, cfg: EmbedTrainConfig, shots: list[tuple[str, str]], rng: random.Random) -> str:
    examples = rng.sample(shots, min(cfg.n_examples, len(shots))) if cfg.n_examples else []
    prefix = query_prompt(cfg, examples)
    return f"{prefix}{query}" if prefix else query


def set_prompt_pooling(model: Any, include: bool) -> bool:
    """Make mean pooling include (or leave out) prompt tokens; True when the model has such a pooling.

    A mean-pooled encoder that was not trained with instructions loses much of its query signal to a long
    instruction (MiniLM on NFCorpus: nDCG@10 0.316 without, 0.232 with the instruction pooled, 0.302
    with it left out), so the instruction recipe pools only the query's own tokens, as INSTRUCTOR and
    GritLM do. The flag is saved in the pooling config, so the registered model behaves the same.
    """
    found = False
    for module in model:
        if not hasattr(module, "include_prompt"):
            continue
        mode = getattr(module, "pooling_mode", None)
        if mode is None and hasattr(module, "get_pooling_mode_str"):  # sentence-transformers < 5
            mode = module.get_pooling_mode_str()
        if mode in (None, "mean", "weightedmean", "mean_sqrt_len_tokens"):
            module.include_prompt = include
            found = True
    return found


def embed_texts(model: Any, texts: list[str], max_length: int, prompt: str | None = None):  # noqa: ANN202
    old = model.max_seq_length
    model.max_seq_length = min(old or max_length, max_length)
    try:
        if hasattr(model, "preprocess"):
            features = model.preprocess(texts, prompt=prompt)
        else:  # sentence-transformers < 5: no prompt-aware tokenisation
            features = model.tokenize([f"{prompt}{t}" for t in texts] if prompt else texts)
    finally:
        model.max_seq_length = old
    device = next(model.parameters()).device
    features = {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}
    return model(features)["sentence_embedding"]
