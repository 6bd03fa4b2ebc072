"""Build model objects from a folder or hub id. Heavy libraries are imported only when called."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lethe.errors import MissingDependency, RegistryError
from lethe.store.files import atomic_write_dir

_QUANT_RE = re.compile(r"(?i)(?<![A-Za-z0-9])(IQ\d_[A-Z0-9_]+|Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32)"
                       r"(?=\.gguf$)")


def _require(module: str, hint: str) -> Any:
    """Import ``module`` or raise :class:`MissingDependency` with an install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(f"{module} is needed here: {hint}") from exc


def float32_kwargs() -> dict[str, Any]:
    """``{"dtype": torch.float32}`` (or ``torch_dtype`` on transformers older than 4.56)."""
    torch = _require("torch", "pip install torch")
    transformers = _require("transformers", "pip install transformers")
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: torch.float32}


def load_bi_encoder(target: str, revision: str | None, device: str) -> Any:
    """A ``SentenceTransformer`` from a folder or a hub id."""
    st = _require("sentence_transformers", "pip install sentence-transformers")
    return st.SentenceTransformer(target, device=device, revision=revision)


def load_cross_encoder(target: str, revision: str | None, device: str) -> Any:
    """A one-label ``CrossEncoder`` from a folder or a hub id."""
    st = _require("sentence_transformers", "pip install sentence-transformers")
    return st.CrossEncoder(target, num_labels=1, device=device, revision=revision)


def load_causal_lm(target: str, revision: str | None, device: str) -> tuple[Any, Any]:
    """``(AutoModelForCausalLM, AutoTokenizer)`` in float32 from a folder or a hub id."""
    transformers = _require("transformers", "pip install transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(target, revision=revision)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        target, revision=revision, **float32_kwargs()
    )
    return model.to(device).eval(), tokenizer


def apply_adapter(base: Any, adapter_dir: Path) -> Any:
    """Put the peft adapter saved in ``adapter_dir`` on a loaded base model.

    A transformers model (or the model of a ``(model, tokenizer)`` pair) comes back wrapped in a
    ``PeftModel``; in a sentence-transformers model (bi- or cross-encoder) the inner transformers
    model is wrapped in place, so the adapter must have been saved from that inner model.
    """
    if isinstance(base, tuple):
        model, tokenizer = base
        return apply_adapter(model, adapter_dir), tokenizer
    peft = _require("peft", "pip install peft")
    holder, attr = _transformer_slot(base)
    if holder is None:
        return peft.PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    wrapped = peft.PeftModel.from_pretrained(getattr(holder, attr), str(adapter_dir)).eval()
    setattr(holder, attr, wrapped)
    return base


def _transformer_slot(model: Any) -> tuple[Any, str]:
    """Where a sentence-transformers / cross-encoder model keeps its transformers model:
    ``(module, attribute)``, or ``(None, "")`` for a plain transformers model."""
    if not hasattr(model, "predict") and not hasattr(model, "encode"):
        return None, ""
    for module in model.modules():
        for attr in ("auto_model", "model"):  # sentence-transformers < 6, >= 6
            child = module._modules.get(attr) if hasattr(module, "_modules") else None
            if child is not None and hasattr(child, "config") and module is not model:
                return module, attr
    raise RegistryError(f"cannot find the transformer inside {type(model).__name__} to put an "
                        "adapter on")


def gguf_quant_type(path: Path) -> str | None:
    """The quantization of a .gguf file (``Q4_1``, ``F16``...), from its header or its name."""
    try:
        import gguf

        reader = gguf.GGUFReader(str(path))
        field = reader.fields["general.file_type"]
        value = int(field.parts[field.data[0]][0])
        return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_")
    except Exception:  # no gguf package, no such key, an unknown value: fall back to the name
        match = _QUANT_RE.search(path.name)
        return match.group(1).upper() if match else None


def convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Dequantize a .gguf model to float32 and save it (and its tokenizer) in ``out_dir``."""
    _require("gguf", "pip install gguf (transformers reads .gguf files with it)")
    transformers = _require("transformers", "pip install transformers")
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, **float32_kwargs()
    )
    save_dequantized(model, tokenizer, out_dir)


def save_dequantized(model: Any, tokenizer: Any, out_dir: Path) -> None:
    """Save a GGUF-loaded causal LM (and its tokenizer) as a plain float32 checkpoint.

    ``save_pretrained`` refuses a GGUF-loaded model, so its weights go into a fresh model built
    from the config without ``quantization_config``. Written aside, then renamed.
    """
    transformers = _require("transformers", "pip install transformers")
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = transformers.AutoModelForCausalLM.from_config(config, **float32_kwargs())
    fresh.load_state_dict(model.state_dict())
    atomic_write_dir(out_dir, lambda tmp: (fresh.save_pretrained(tmp),
                                          tokenizer.save_pretrained(tmp)))


def check_loadable(kind: str) -> None:
    """Raise unless ``kind`` is a model kind that :func:`load` can build."""
    from lethe.registry.spec import MODEL_KINDS

    if kind not in MODEL_KINDS:
        raise RegistryError(
            f"artifacts of kind {kind!r} are not models; use Registry.resolve_path() for their "
            f"files (load() handles {', '.join(MODEL_KINDS)})"
        )
