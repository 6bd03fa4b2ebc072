"""Bi-encoder inference with ONNX Runtime on CPU: the transformer exported to ONNX (fp32, or int8 by
dynamic quantisation), pooling and normalisation done in numpy as the sentence-transformers model does.

The export is cheap (about 1.5 s for MiniLM-L6, 1.5 s to fuse BERT's ops, 1 s to quantise), so it is
redone in each process and kept in memory (temporary files are removed at once): no ONNX file outlives
the process, and retiring a model version leaves no copy of its weights behind. Vectors of another
backend never share cache entries with the torch ones: the encoder's ``version`` is ``name@vN+backend``
(``minilm@v1+onnx-int8``).

Supported module stacks: ``Transformer`` + ``Pooling`` (mean or cls) [+ ``Normalize``]; anything else
raises :class:`~lethe.errors.LetheError`. onnxruntime and onnx are the ``onnx`` extra.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lethe.errors import LetheError

#: encoder backends: sentence-transformers on torch, ONNX Runtime fp32, ONNX Runtime with int8 weights
BACKENDS = ("torch", "onnx", "onnx-int8")
#: intra-op threads of an ONNX session unless told otherwise (measured on a 2-core box: see docs)
DEFAULT_THREADS = 1
#: the transformer inputs an export may take, in the order the ONNX graph declares them
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
POOLING_MODES = ("mean", "cls")
INSTALL_HINT = "pip install 'lethe-ir[onnx]'"


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a clear error."""
    if backend not in BACKENDS:
        raise LetheError(f"unknown encoder backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def split_backend(ref: str) -> tuple[str, str]:
    """``"minilm@v1+onnx"`` -> ``("minilm@v1", "onnx")``; no ``+backend`` suffix means torch."""
    base, sep, backend = ref.partition("+")
    return base, check_backend(backend) if sep else "torch"


def with_backend(version: str, backend: str) -> str:
    """The encoder version string of ``version`` run on ``backend`` (torch adds no suffix)."""
    return version if check_backend(backend) == "torch" else f"{version}+{backend}"


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or an error saying how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise LetheError(f"the ONNX encoder backends need onnxruntime and onnx: {INSTALL_HINT}") from e
    return onnxruntime


# -- reading the sentence-transformers model --------------------------------------------------------
@dataclass(frozen=True)
class Head:
    """What follows the transformer: the pooling mode and whether the model normalises."""

    pooling: str
    normalize: bool


def _pooling_mode(pooling: Any) -> str:
    mode = getattr(pooling, "pooling_mode", None)
    if isinstance(mode, str):  # sentence-transformers >= 6
        return mode
    if isinstance(mode, (list, tuple)):  # several modes, concatenated
        return "+".join(map(str, mode))
    cfg = pooling.get_config_dict()
    on = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
    names = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
    return names.get(on[0], on[0]) if len(on) == 1 else "+".join(on)


def read_head(model: Any) -> Head:
    """Check ``model``'s modules are ``Transformer, Pooling[, Normalize]`` and read the pooling mode."""
    mods = list(model)
    kinds = [type(m).__name__ for m in mods]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise LetheError(f"the ONNX backends support Transformer + Pooling [+ Normalize] models, not {kinds}; "
                         "use --encoder-backend torch")
    mode = _pooling_mode(mods[1])
    if mode not in POOLING_MODES:
        raise LetheError(f"the ONNX backends support {' or '.join(POOLING_MODES)} pooling, not {mode!r}; "
                         "use --encoder-backend torch")
    return Head(mode, normalize=len(mods) == 3)


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Sentence vectors from token vectors ``(batch, seq, dim)`` and the attention mask."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask[..., None].astype(hidden.dtype)
    return (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)


def l2_normalize(vecs: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return vecs / np.clip(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12, None)


# -- export ------------------------------------------------------------------------------------------
def _hf_model(model: Any) -> Any:
    first = model[0]
    hf = getattr(first, "auto_model", None)
    return hf if hf is not None else first.model


def tokenize(model: Any, texts: Sequence[str], prompt: str | None = None) -> dict[str, np.ndarray]:
    """The model's own tokenisation (truncation, prompt) as int64 arrays, transformer inputs only."""
    if hasattr(model, "preprocess"):  # sentence-transformers >= 6
        feats = model.preprocess(list(texts), prompt=prompt)
    else:
        feats = model.tokenize([(prompt or "") + t for t in texts])
    return {k: np.asarray(feats[k].cpu().numpy(), dtype=np.int64) for k in INPUT_NAMES if k in feats}


@contextmanager
def eager_attention(hf: Any) -> Iterator[None]:
    """Trace with the plain (eager) attention, a graph ONNX Runtime fuses; restored afterwards (the
    model may be shared with a torch encoder)."""
    config = getattr(hf, "config", None)
    before = getattr(config, "_attn_implementation", None)
    setter = getattr(hf, "set_attn_implementation", None)
    if config is None or before in (None, "eager"):
        yield
        return
    def use(impl: str) -> None:
        if setter is not None:
            setter(impl)
        else:
            config._attn_implementation = impl

    try:
        use("eager")
        yield
    finally:
        use(before)


def export_onnx(model: Any, opset: int = 17) -> bytes:
    """The transformer of sentence-transformers ``model`` as an ONNX graph (dynamic batch and sequence
    axes; inputs as the tokenizer gives them, output ``token_embeddings``), exported with the
    TorchScript exporter (the dynamo one needs onnxscript)."""
    import torch

    hf = _hf_model(model).eval()
    feats = tokenize(model, ["an example sentence to trace", "another one"])
    names = [n for n in INPUT_NAMES if n in feats]

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hf = hf

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.hf(**dict(zip(names, args))).last_hidden_state

    axes = {n: {0: "batch", 1: "seq"} for n in [*names, "token_embeddings"]}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), eager_attention(hf):
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped().eval(), tuple(torch.from_numpy(feats[n]) for n in names), buf,
                          input_names=names, output_names=["token_embeddings"], dynamic_axes=axes,
                          opset_version=opset, dynamo=False)
    return buf.getvalue()


#: architectures whose graph ONNX Runtime's transformer optimizer fuses (attention, layer norms, GELU)
FUSABLE = ("bert",)


def fuse(onnx_bytes: bytes, config: Any) -> bytes:
    """``onnx_bytes`` with BERT's attention, embedding and skip layer norms and GELU fused into ONNX
    Runtime's contrib ops (same vectors; on MiniLM int8 encodes ~1.25x faster, fp32 as fast);
    architectures outside :data:`FUSABLE` are returned as they are."""
    if getattr(config, "model_type", None) not in FUSABLE:
        return onnx_bytes
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory(prefix="lethe-onnx-") as tmp, _quiet():
        opt = optimize_model(onnx.load_from_string(onnx_bytes), model_type="bert", opt_level=0,
                             num_heads=config.num_attention_heads, hidden_size=config.hidden_size)
        opt.save_model_to_file(str(Path(tmp) / "model.onnx"))  # also declares the contrib ops' domain
        return (Path(tmp) / "model.onnx").read_bytes()


def quantize_int8(onnx_bytes: bytes) -> bytes:
    """``onnx_bytes`` with int8 weights (``quantize_dynamic``, QInt8, one scale per output channel:
    per-tensor scales gave cosine 0.90 to the fp32 vectors on MiniLM, per-channel 0.99); the temp
    files are removed."""
    require_onnxruntime()
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="lethe-onnx-") as tmp, _quiet():
        src, dst = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        src.write_bytes(onnx_bytes)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})  # fused ops lack type info
        return dst.read_bytes()


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the optimizer's and quantizer's advice (logged as warnings) while they run."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def make_session(onnx_bytes: bytes, threads: int = DEFAULT_THREADS) -> Any:
    """An ONNX Runtime CPU session over ``onnx_bytes`` with ``threads`` intra-op threads."""
    ort = require_onnxruntime()
    if threads < 1:
        raise LetheError(f"--threads must be at least 1, not {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def length_batches(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of ``texts`` longest first, cut into batches (little padding per batch)."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


# -- the encoder -------------------------------------------------------------------------------------
@dataclass
class OnnxEncoder:
    """A sentence-transformers bi-encoder run by ONNX Runtime (``backend`` ``onnx`` or ``onnx-int8``).

    ``model`` is the loaded ``SentenceTransformer`` (its tokenizer, modules and weights to export);
    ``version`` is the registry version (``name@vN``): the encoder's own :attr:`version` adds the backend.
    Vectors equal :class:`~lethe.embedding.SentenceTransformerEncoder`'s within float error (fp32) or
    quantisation error (int8).
    """

    model: Any
    version: str
    backend: str = "onnx"
    threads: int = DEFAULT_THREADS
    batch_size: int = 32
    normalize: bool = True
    query_prompt: str | None = None
    document_prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if check_backend(self.backend) == "torch":
            raise LetheError("OnnxEncoder runs the onnx backends; use SentenceTransformerEncoder for torch")
        require_onnxruntime()
        self.head = read_head(self.model)
        if getattr(self.model[1], "include_prompt", True) is False and (self.query_prompt or self.document_prompt):
            raise LetheError("the ONNX backends do not support pooling that leaves the prompt out "
                             "(include_prompt=False); use --encoder-backend torch")
        self.version = with_backend(split_backend(self.version)[0], self.backend)
        graph = fuse(export_onnx(self.model), getattr(_hf_model(self.model), "config", None))
        if self.backend == "onnx-int8":
            graph = quantize_int8(graph)
        self.session = make_session(graph, self.threads)
        self.inputs = [i.name for i in self.session.get_inputs()]

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        get = getattr(self.model, "get_embedding_dimension", None)
        return int(get() if get else self.model.get_sentence_embedding_dimension())

    def _batch(self, texts: Sequence[str], prompt: str | None) -> np.ndarray:
        feats = tokenize(self.model, texts, prompt)
        hidden = self.session.run(None, {n: feats[n] for n in self.inputs})[0]
        vecs = pool(hidden, feats["attention_mask"], self.head.pooling)
        return l2_normalize(vecs) if self.head.normalize or self.normalize else vecs

    def _encode(self, texts: Sequence[str], prompt: str | None, show_progress: bool) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        batches = length_batches(texts, self.batch_size)
        for idx in _progress(batches, show_progress):
            out[idx] = self._batch([texts[i] for i in idx], prompt)
        return out

    def encode_documents(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Document vectors, float32, one row per text (in the order given)."""
        return self._encode(texts, self.document_prompt, show_progress)

    def encode_queries(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Query vectors, float32, one row per text (in the order given)."""
        return self._encode(texts, self.query_prompt, show_progress)


def _progress(batches: list[list[int]], show: bool) -> Any:
    if not show or not batches:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, desc="Batches", disable=os.environ.get("TQDM_DISABLE") == "1")
