"""Whether an LM runs packed batches (`batches.Packed`) exactly as padded ones: checked once per LM class and
attention implementation, on two short sequences, before a training run feeds it any.

transformers gives a packed row a block-diagonal causal mask when it is fed position ids that restart at 0 and no
attention mask (`masking_utils.find_packed_sequence_indices`). A model class that builds its mask some other way
would let each sequence attend to the ones before it in the row, silently: so the first packed forward of each
kind of LM is compared with the sequences run one by one, and a kind that differs is fed padded batches.
"""

from __future__ import annotations

import torch
from peft import PeftModel

from worker.engine.lm.load import CausalLM

# Packed and separate logits of the same tokens differ by the float sums' order only: far below this fraction of
# the logits' scale. Attending across sequences moves them by a large fraction of it.
_TOLERANCE = 1e-3

_checked: dict[tuple[type, str], bool] = {}


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
    expected = torch.cat(alone).float()
    scale = float(expected.abs().max().clamp(min=1.0))
    return bool(torch.allclose(packed.float(), expected, rtol=0.0, atol=_TOLERANCE * scale))
