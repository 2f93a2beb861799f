"""Whether an LM runs packed batches (`batches.Packed`) exactly as padded ones: checked once per LM class and
attention implementation, on two short sequences, before a training run feeds it any.

transformers gives a packed row a block-diagonal causal mask when it is fed position ids that restart at 0 and no
attention mask (`masking_utils.find_packed_sequence_indices`). A model class that builds its mask some other way
would let each sequence attend to the ones before it in the row, silently: so the first packed forward of each
kind of LM is compared with the sequences run one by one, and a kind that differs is fed padded batches.

Packing is also a matter of cost (`packing_pays`): a packed row saves the padding's share of the linear layers'
work, but its block-diagonal mask is an arbitrary mask to attention, which then computes the scores of every pair of
the row's T tokens, T² of them, where the padded batch computes B·L² (B rows of width L). Short rows (the CPU's
multiple-choice batches: tens of tokens a row) gain; long ones lose (seen on an H200: a Llama-3.2-1B batch of 16
rows of about 550 tokens, packed into one row of 8,800, trained at 0.58× the naive padded loop in bf16).
"""

from __future__ import annotations

import weakref
from typing import Any, cast

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import PreTrainedModel

from worker.engine.lm.architecture import LINEAR_TYPES
from worker.engine.lm.load import CausalLM

# Packed and separate logits of the same tokens differ by the float sums' order only: far below this fraction of
# the logits' scale. Attending across sequences moves them by a large fraction of it (a tiny random Llama: 0.28 of
# a scale of 0.42). In bf16 the sums' order can move a logit by a rounding step of the format itself, so the bound
# is at least two of bf16's steps (2 × 2⁻⁷): an AMD EPYC without native bf16 gave one step (0.00195 at 0.42)
# where an Intel Xeon with AMX gave none.
_TOLERANCE = 1e-3


def _tolerance(dtype: torch.dtype) -> float:
    """The fraction of the logits' scale by which packed and separate logits of `dtype` may differ."""
    return max(_TOLERANCE, 2 * torch.finfo(dtype).eps)


_checked: dict[tuple[type, str], bool] = {}
_attention_ratios: weakref.WeakKeyDictionary[torch.nn.Module, float] = weakref.WeakKeyDictionary()


def packing_pays(lm: CausalLM, rows: int, width: int, tokens: int) -> bool:
    """Whether one packed row of `tokens` tokens costs fewer FLOPs than the padded batch of `rows` × `width`.

    Per token the linear layers cost 2·N (N: the weights of every linear layer but the head, GPT-2's Conv1D
    included), and per pair of tokens attention costs 4·d·layers (the scores QKᵀ and their product with V,
    d = heads × head dim). Both batches
    go to attention with a mask (block-diagonal, or padding), so each computes every pair its mask spans: T² for the
    packed row, B·L² for the padded batch. So packing pays when T + ρ·T² < B·L + ρ·B·L², ρ = 2·d·layers / N. The
    head runs at the target positions only either way and is left out, as are norms and activations (linear in the
    tokens, so they side with packing: the rule errs towards padding)."""
    ratio = _attention_ratio(lm)
    return tokens + ratio * tokens**2 < rows * width + ratio * rows * width**2


def _attention_ratio(lm: CausalLM) -> float:
    """ρ of `packing_pays` for `lm`, computed once per base model."""
    model = cast(PreTrainedModel, lm.get_base_model() if isinstance(lm, PeftModel) else lm)
    if model not in _attention_ratios:
        config: Any = model.config
        heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
        head = model.get_output_embeddings()
        linear = sum(
            m.get_parameter("weight").numel()
            for name, m in model.named_modules()
            if isinstance(m, LINEAR_TYPES) and m is not head and "lora_" not in name
        )
        _attention_ratios[model] = 2 * heads * head_dim * int(config.num_hidden_layers) / max(linear, 1)
    return _attention_ratios[model]


def packs_correctly(lm: CausalLM) -> bool:
    """Whether `lm` (its class and attention implementation) gives a packed row the logits of its sequences run
    one by one; measured the first time and remembered."""
    model = lm.get_base_model() if isinstance(lm, PeftModel) else lm
    key = (type(model), str(getattr(lm.config, "_attn_implementation", None)))
    if key not in _checked:
        _checked[key] = _measure(lm)
    return _checked[key]


def _measure(lm: CausalLM) -> bool:
    """Two sequences (3 and 5 tokens) packed into one row against each run alone, in eval mode, without autocast."""
    device = next(lm.parameters()).device
    vocab = int(lm.config.vocab_size)
    sequences = [[(7 * i + 3) % vocab for i in range(3)], [(11 * i + 5) % vocab for i in range(5)]]
    was_training = lm.training
    lm.eval()
    # Without autocast, LoRA layers (fp32 weights) on a bf16 LM must cast their inputs: turn the casts back on for
    # this check, should it come inside a training step that turned them off (`loop`, under autocast).
    tuners = [m for m in lm.modules() if isinstance(m, BaseTunerLayer)]
    casting = [m.cast_input_dtype_enabled for m in tuners]
    for module in tuners:
        setattr(module, "cast_input_dtype_enabled", True)  # noqa: B010 (nn.Module's typed __setattr__)
    try:
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            alone = [lm(input_ids=torch.tensor([s], device=device)).logits[0] for s in sequences]
            packed = lm(
                input_ids=torch.tensor([sequences[0] + sequences[1]], device=device),
                position_ids=torch.tensor([list(range(3)) + list(range(5))], device=device),
                use_cache=False,  # as `Packed.lm_inputs`: transformers looks for packed sequences only without one
            ).logits[0]
    finally:
        lm.train(was_training)
        for module, enabled in zip(tuners, casting, strict=True):
            setattr(module, "cast_input_dtype_enabled", enabled)  # noqa: B010
    expected = torch.cat(alone).float()
    scale = float(expected.abs().max().clamp(min=1.0))
    # bf16 weights (a bf16 LM on a GPU, or the blocks' linear weights on a CPU: `block_weights.py`) round their
    # products to bf16 even where the logits come out in fp32.
    dtypes = {packed.dtype} | {p.dtype for p in lm.parameters() if p.is_floating_point()}
    tolerance = max(_tolerance(dtype) for dtype in dtypes)
    return bool(torch.allclose(packed.float(), expected, rtol=0.0, atol=tolerance * scale))
