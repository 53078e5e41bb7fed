"""HF BERT checkpoint loading and saving, with an explicit name mapping (nanoGPT style).

unimask's module names are short (``layers.3.attn.qkv``) and Q/K/V are one fused projection;
HF ``BertModel`` names are long and Q/K/V separate. :func:`hf_to_unimask` and
:func:`unimask_to_hf` are the whole mapping, in both directions, written out name by name.

Accepted inputs (google-research/bert TF conversions and HF exports): ``model.safetensors`` or
``pytorch_model.bin``; names with or without the ``bert.`` prefix of ``BertFor*`` heads;
legacy LayerNorm ``gamma``/``beta``; the ``position_ids`` buffer is ignored.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .config import EncoderConfig

__all__ = [
    "read_state_dict",
    "normalize_hf_names",
    "hf_to_unimask",
    "unimask_to_hf",
    "load_encoder",
    "save_encoder",
    "save_safetensors",
    "HEAD_NAMES",
]

# unimask BertForPretraining head name -> HF BertForPreTraining name (decoder weight is tied)
HEAD_NAMES: dict[str, str] = {
    "mlm.transform.weight": "cls.predictions.transform.dense.weight",
    "mlm.transform.bias": "cls.predictions.transform.dense.bias",
    "mlm.ln.weight": "cls.predictions.transform.LayerNorm.weight",
    "mlm.ln.bias": "cls.predictions.transform.LayerNorm.bias",
    "mlm.bias": "cls.predictions.bias",
    "nsp.weight": "cls.seq_relationship.weight",
    "nsp.bias": "cls.seq_relationship.bias",
}

_EMBED = {
    "embeddings.word.weight": "embeddings.word_embeddings.weight",
    "embeddings.position.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.ln.weight": "embeddings.LayerNorm.weight",
    "embeddings.ln.bias": "embeddings.LayerNorm.bias",
    "pooler.weight": "pooler.dense.weight",
    "pooler.bias": "pooler.dense.bias",
    "final_ln.weight": "unimask.final_layer_norm.weight",  # pre-LN only; not an HF name
    "final_ln.bias": "unimask.final_layer_norm.bias",
}

_LAYER = {  # per layer i: unimask suffix -> HF suffix under encoder.layer.{i}.
    "attn.proj": "attention.output.dense",
    "ln1": "attention.output.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "ln2": "output.LayerNorm",
}


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of ``model.safetensors`` (preferred) or ``pytorch_model.bin`` in ``directory``."""
    directory = Path(directory)
    st, pt = directory / "model.safetensors", directory / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file  # noqa: PLC0415

        return load_file(str(st))
    if pt.is_file():
        return torch.load(pt, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {directory}")


def normalize_hf_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the ``bert.`` prefix, rename legacy ``gamma``/``beta``, drop ``position_ids``."""
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if name.startswith("bert."):
            name = name[len("bert."):]
        if name.endswith("position_ids"):
            continue
        if name.endswith(".gamma"):
            name = name[: -len(".gamma")] + ".weight"
        elif name.endswith(".beta"):
            name = name[: -len(".beta")] + ".bias"
        out[name] = t
    return out


def hf_to_unimask(sd: dict[str, torch.Tensor], config: EncoderConfig,
                  prefix: str = "") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map normalized HF names to unimask names under ``prefix``; returns ``(state, missing)``."""
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []

    def take(ours: str, hf: str) -> None:
        if hf in sd:
            out[prefix + ours] = sd[hf]
        else:
            missing.append(hf)

    for ours, hf in _EMBED.items():
        if ours.startswith("pooler") and not config.add_pooler:
            continue
        if ours.startswith("final_ln") and not config.pre_layer_norm:
            continue
        take(ours, hf)
    for i in range(config.num_hidden_layers):
        hf_l = f"encoder.layer.{i}."
        for ours, hf in _LAYER.items():
            for p in ("weight", "bias"):
                take(f"layers.{i}.{ours}.{p}", f"{hf_l}{hf}.{p}")
        for p in ("weight", "bias"):
            parts = [sd.get(f"{hf_l}attention.self.{n}.{p}") for n in ("query", "key", "value")]
            if any(x is None for x in parts):
                missing += [f"{hf_l}attention.self.{n}.{p}" for n, x in
                            zip(("query", "key", "value"), parts) if x is None]
            else:
                out[f"{prefix}layers.{i}.attn.qkv.{p}"] = torch.cat(parts, dim=0)
    return out, missing


def unimask_to_hf(sd: dict[str, torch.Tensor], config: EncoderConfig, prefix: str = "") -> dict[str, torch.Tensor]:
    """Inverse of :func:`hf_to_unimask` for the encoder tensors under ``prefix``."""
    out: dict[str, torch.Tensor] = {}
    for ours, hf in _EMBED.items():
        if prefix + ours in sd:
            out[hf] = sd[prefix + ours]
    H = config.hidden_size
    for i in range(config.num_hidden_layers):
        hf_l = f"encoder.layer.{i}."
        for ours, hf in _LAYER.items():
            for p in ("weight", "bias"):
                out[f"{hf_l}{hf}.{p}"] = sd[f"{prefix}layers.{i}.{ours}.{p}"]
        for p in ("weight", "bias"):
            q, k, v = sd[f"{prefix}layers.{i}.attn.qkv.{p}"].split(H, dim=0)
            for n, t in zip(("query", "key", "value"), (q, k, v)):
                out[f"{hf_l}attention.self.{n}.{p}"] = t
    return out


def _check_shapes(module: nn.Module, sd: dict[str, torch.Tensor], directory: Path) -> None:
    own = module.state_dict()
    for name, t in sd.items():
        if name in own and own[name].shape != t.shape:
            raise ValueError(
                f"checkpoint {directory}: tensor for {name} has shape {tuple(t.shape)}, the model "
                f"built from config.json expects {tuple(own[name].shape)}"
            )


def load_encoder(cls, directory: str | Path, config: EncoderConfig | None = None):
    """Build ``cls(config)`` and load an HF BERT checkpoint into it (strict on missing weights)."""
    directory = Path(directory)
    if config is None:
        cfg_path = directory / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"no config.json in {directory}")
        config = EncoderConfig.from_json_file(cfg_path)
    sd = normalize_hf_names(read_state_dict(directory))
    if "pooler.dense.weight" not in sd and config.add_pooler:
        # checkpoints saved without a pooler (HF add_pooling_layer=False) load without one
        config.add_pooler = False
    ours, missing = hf_to_unimask(sd, config)
    if missing:
        raise ValueError(f"checkpoint {directory} is missing {len(missing)} encoder weights: {missing}")
    model = cls(config)
    _check_shapes(model, ours, directory)
    model.load_state_dict(ours, strict=True)
    return model


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors atomically (temp file in the same directory + ``os.replace``)."""
    from safetensors.torch import save_file  # noqa: PLC0415

    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata or {"format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_config(config: EncoderConfig, directory: Path, architectures: list[str] | None = None) -> None:
    d = config.to_dict()
    if architectures:
        d["architectures"] = architectures
    tmp = directory / "config.json.tmp"
    tmp.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, directory / "config.json")


def save_encoder(model, directory: str | Path) -> None:
    """``config.json`` + ``model.safetensors`` loadable by ``transformers.BertModel``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_config(model.config, directory)
    save_safetensors(unimask_to_hf(model.state_dict(), model.config), directory / "model.safetensors")
