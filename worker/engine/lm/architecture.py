"""The structure of a decoder-only LM, read from its module tree: its decoder blocks, and inside each block the
attention, the MLP, the MLP's output projection and the attention's value projection; and which block (and which
module in it) an adapter parameter belongs to.

Every family transformers ships with the usual layout is covered: Llama, Mistral, Qwen2, Qwen3, Gemma, OLMo (and
others with Llama's module names), Phi-3, GPT-NeoX (Pythia) and GPT-2.

How it is found:
- The blocks, structurally: the module list with one entry per hidden layer among the direct children of the LM's
  decoder (`get_decoder()`): `model.layers` in Llama-like LMs, `gpt_neox.layers` in GPT-NeoX, `transformer.h` in
  GPT-2. Adapter parameters are mapped to blocks by that list's qualified name, not by a guessed `layers.<i>.`.
- Inside a block, by name: nothing in the structure says which linear layer is the MLP's output, so each family's
  module names are a `BlockLayout` in `LAYOUTS`, and a block takes the first layout whose modules it has.
  An LM whose blocks match no layout (a mixture of experts, a hybrid of block kinds) is a ValueError that names its
  class.

The attention's value projection: in Llama-like LMs `v_proj`, a module of its own. Phi-3 (`qkv_proj`), GPT-NeoX
(`query_key_value`) and GPT-2 (`c_attn`) compute queries, keys and values with one fused module, so there "the
value projection" is that whole module: a LoRA adapter on it has one A matrix for q, k and v together and cannot be
split into their parts. The values are a slice of its output: Phi-3's last num_key_value_heads · head_dim features
([q | k | v]); GPT-2's last hidden_size features ([q | k | v]); GPT-NeoX's last head_size features of each head's
3 · head_size chunk ([q_h | k_h | v_h] per head).
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

# The module types that hold a decoder block's weight matrices: torch's Linear, and GPT-2's Conv1D (a linear layer
# whose weight is stored transposed, [in, out]).
LINEAR_TYPES: tuple[type[torch.nn.Module], ...] = (torch.nn.Linear, Conv1D)


@dataclass(frozen=True)
class BlockLayout:
    """Where a family keeps the parts of a decoder block, as module paths inside the block."""

    name: str
    # The attention module: its output is what the attention adds to the residual stream.
    attention: str
    # The MLP module.
    mlp: str
    # The MLP's output projection: its columns are the MLP's value vectors (Geva et al.), its input their
    # coefficients; Lethe's API calls it `down_proj` after the Llama name.
    mlp_output: str
    # The attention's value projection; with value_fused, the module that computes q, k and v together.
    attention_value: str
    value_fused: bool = False

    def paths(self) -> tuple[str, ...]:
        return (self.attention, self.mlp, self.mlp_output, self.attention_value)


# Checked against transformers' modeling code (5.24). Llama's names are shared by Mistral, Qwen2, Qwen3, Gemma and
# OLMo; Phi-3 keeps Llama's attention and MLP names but fuses q, k and v (`qkv_proj`) and gate and up
# (`gate_up_proj`).
LAYOUTS: tuple[BlockLayout, ...] = (
    BlockLayout(
        "llama", attention="self_attn", mlp="mlp", mlp_output="mlp.down_proj", attention_value="self_attn.v_proj"
    ),
    BlockLayout(
        "phi3",
        attention="self_attn",
        mlp="mlp",
        mlp_output="mlp.down_proj",
        attention_value="self_attn.qkv_proj",
        value_fused=True,
    ),
    BlockLayout(
        "gpt_neox",
        attention="attention",
        mlp="mlp",
        mlp_output="mlp.dense_4h_to_h",
        attention_value="attention.query_key_value",
        value_fused=True,
    ),
    BlockLayout(
        "gpt2", attention="attn", mlp="mlp", mlp_output="mlp.c_proj", attention_value="attn.c_attn", value_fused=True
    ),
)


def _has_module(module: torch.nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def block_layout(block: torch.nn.Module) -> BlockLayout:
    """The first layout of `LAYOUTS` whose modules `block` has; ValueError naming the block's class if none."""
    for layout in LAYOUTS:
        if all(_has_module(block, path) for path in layout.paths()):
            return layout
    known = "; ".join(f"{layout.name}: {', '.join(layout.paths())}" for layout in LAYOUTS)
    raise ValueError(f"decoder block {type(block).__name__} matches none of the known layouts ({known})")


@dataclass(frozen=True)
class Architecture:
    """An LM's decoder blocks, the qualified name of their list in the transformers LM (e.g. `model.layers`) and
    the layout of every block."""

    lm_class: str
    blocks: torch.nn.ModuleList
    blocks_name: str
    layout: BlockLayout

    def block(self, layer: int) -> torch.nn.Module:
        """Decoder block `layer` (0-based); ValueError when the LM has no such block."""
        if not 0 <= layer < len(self.blocks):
            last = len(self.blocks) - 1
            raise ValueError(f"layer {layer} does not exist: the LM has {len(self.blocks)} decoder blocks (0-{last})")
        return self.blocks[layer]

    def attention(self, layer: int) -> torch.nn.Module:
        return self.block(layer).get_submodule(self.layout.attention)

    def mlp(self, layer: int) -> torch.nn.Module:
        return self.block(layer).get_submodule(self.layout.mlp)

    def mlp_output(self, layer: int) -> torch.nn.Module:
        """The MLP's output projection of block `layer` (down_proj, dense_4h_to_h, c_proj)."""
        return self.block(layer).get_submodule(self.layout.mlp_output)

    def attention_value(self, layer: int) -> torch.nn.Module:
        """The attention's value projection of block `layer` (the fused q/k/v module where `layout.value_fused`)."""
        return self.block(layer).get_submodule(self.layout.attention_value)

    def linear_paths(self) -> list[str]:
        """The paths inside a block of its linear layers (Linear or Conv1D), as in block 0, sorted; where peft
        wrapped one with an adapter, the wrapper's (not those of the base layer and adapter matrices inside it)."""
        paths: list[str] = []
        for name, module in self.blocks[0].named_modules():
            if any(name.startswith(path + ".") for path in paths):
                continue
            if isinstance(module, (*LINEAR_TYPES, BaseTunerLayer)):
                paths.append(name)
        return sorted(paths)

    def locate(self, name: str) -> tuple[int, str] | None:
        """(block, path inside the block) of the parameter or module `name`, e.g. `base_model.model.model.layers.3.
        mlp.down_proj.lora_A.default.weight` -> (3, "mlp.down_proj.lora_A.default.weight"); None outside the blocks.

        Names may carry any prefix (peft's `base_model.model.`): the blocks' list is found by its qualified name.
        """
        match = re.search(rf"(?:^|\.){re.escape(self.blocks_name)}\.(\d+)\.(.+)$", name)
        return (int(match.group(1)), match.group(2)) if match else None

    def block_of(self, name: str) -> int | None:
        """The decoder block of the parameter `name`; None for one outside the blocks."""
        located = self.locate(name)
        return located[0] if located else None

    def in_module(self, name: str, path: str) -> bool:
        """Whether the parameter `name` belongs to the module at `path` inside one of the blocks."""
        located = self.locate(name)
        return located is not None and (located[1] == path or located[1].startswith(path + "."))


def transformers_lm(lm: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The transformers LM itself, unwrapped from peft's PeftModel where wrapped."""
    model = lm.get_base_model() if isinstance(lm, PeftModel) else lm
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"expected a transformers LM, got {type(model).__name__}")
    return model


# Descriptions by transformers LM, weakly held: hooks that run every training step (RNA's noise) describe the LM
# each time, and a full walk of a peft-wrapped 30-block LM's module tree takes milliseconds. Wrapping an LM with
# peft, or merging its adapter, leaves its block list and the blocks' layout as they were.
_DESCRIBED: weakref.WeakKeyDictionary[PreTrainedModel, Architecture] = weakref.WeakKeyDictionary()


def describe(lm: PreTrainedModel | PeftModel) -> Architecture:
    """The structure of `lm` (a transformers causal LM, or one wrapped by peft); ValueError naming the LM's class
    when its layout is not supported."""
    model = transformers_lm(lm)
    described = _DESCRIBED.get(model)
    if described is None or model.get_submodule(described.blocks_name) is not described.blocks:
        described = _DESCRIBED[model] = _read_structure(model)
    return described


def _read_structure(model: PreTrainedModel) -> Architecture:
    lm_class = type(model).__name__
    n_layers = getattr(model.config, "num_hidden_layers", None)
    if not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"unsupported LM {lm_class}: its config gives no number of hidden layers")
    decoder = model.get_decoder()
    lists = [child for child in decoder.children() if isinstance(child, torch.nn.ModuleList) and len(child) == n_layers]
    if len(lists) != 1:
        found = "none" if not lists else f"{len(lists)}"
        raise ValueError(
            f"unsupported LM {lm_class}: expected one list of its {n_layers} decoder blocks in "
            f"{type(decoder).__name__}, found {found}"
        )
    blocks = lists[0]
    try:
        layouts = {block_layout(block) for block in blocks}
    except ValueError as exc:
        raise ValueError(f"unsupported LM {lm_class}: {exc}") from None
    if len(layouts) != 1:
        raise ValueError(f"unsupported LM {lm_class}: its decoder blocks do not all have the same layout")
    blocks_name = next(name for name, module in model.named_modules() if module is blocks)
    return Architecture(lm_class=lm_class, blocks=blocks, blocks_name=blocks_name, layout=layouts.pop())
