"""DALLE-pytorch 1.6.x parameter names and ours: the renaming `load_state_dict` applies to reference state dicts.

`DALLE` and `CLIP` register `rename_reference_keys` as a load_state_dict pre-hook, so
`dalle.load_state_dict(reference_weights)` (DALLE-pytorch's generate.py loading block) works unchanged;
`dalle_core.interop` uses the same functions for whole checkpoints. Our own names never match the reference
patterns (ours are `layers.{i}.attn...`, the reference's `layers.layers.{i}.0...`), so our state dicts pass through.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, MutableMapping

from torch import Tensor

__all__ = ["convert_transformer_state_dict", "convert_dalle_state_dict", "rename_reference_keys",
           "SHARED_EMBEDDING_VIEWS"]

# transformer.layers.layers.{i}.{0|1}.<wrappers>.<leaf>   (sequential)
# transformer.layers.blocks.{i}.{f|g}.net.<wrappers>.<leaf>  (reversible)
_LAYER_KEY = re.compile(r"^(?P<prefix>.*?)layers\.(?:layers|blocks)\.(?P<idx>\d+)\.(?P<branch>0|1|f\.net|g\.net)\.(?P<rest>.+)$")
_LEAVES = {
    "to_qkv.weight": "attn.to_qkv.weight",
    "to_out.0.weight": "attn.to_out.weight",
    "to_out.0.bias": "attn.to_out.bias",
    "net.0.weight": "ff.proj_in.weight",
    "net.0.bias": "ff.proj_in.bias",
    "net.3.weight": "ff.proj_out.weight",
    "net.3.bias": "ff.proj_out.bias",
}

SHARED_EMBEDDING_VIEWS = ("text_emb.linear.", "image_emb.linear.")  # the reference's views of to_logits.1


def _convert_layer_key(prefix: str, idx: str, branch: str, rest: str) -> str:
    part = "attn" if branch in ("0", "f.net") else "ff"
    if rest == "scale":
        return f"{prefix}layers.{idx}.{part}_scale"
    for name in ("norm", "norm_out"):
        for param in ("weight", "bias"):
            if rest == f"fn.{name}.{param}":
                return f"{prefix}layers.{idx}.{part}_{name}.{param}"
    for leaf, target in _LEAVES.items():
        if rest.endswith(leaf):
            return f"{prefix}layers.{idx}.{target}"
    raise KeyError(f"unrecognised DALLE-pytorch transformer parameter: {rest!r}")


def rename_reference_keys(module: Any, state_dict: MutableMapping[str, Any], prefix: str = "", *args: Any) -> None:
    """Rename, in place, the DALLE-pytorch keys under `prefix` (any wrapper nesting, sequential or reversible
    layers) to ours, and drop what we rebuild instead of storing: the rotary table `transformer.pos_emb` and the
    shared-embedding views of `to_logits.1`. Other keys are left alone. Also a load_state_dict pre-hook."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if rest.endswith("transformer.pos_emb") or rest.startswith(SHARED_EMBEDDING_VIEWS):
            del state_dict[key]
            continue
        match = _LAYER_KEY.match(rest)
        if match:
            state_dict[prefix + _convert_layer_key(**match.groupdict())] = state_dict.pop(key)


def convert_dalle_state_dict(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """A DALLE-pytorch DALLE or CLIP state dict with our parameter names (a new dict)."""
    out = dict(state_dict)
    rename_reference_keys(None, out)
    return out


convert_transformer_state_dict = convert_dalle_state_dict  # the name interop has always exported
