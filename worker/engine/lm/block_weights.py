"""The decoder blocks' matmul weights stored in bf16 where a CPU computes under bf16 autocast.

Under autocast a linear layer casts its fp32 weight and bias to bf16 on every call. For a frozen weight torch keeps
no cast copy (its autocast cache holds only leaves that require grad), so every forward, every recomputation under
activation checkpointing and every scoring batch casts all of them again, and a training step's backward keeps the
bf16 copies alive as saved tensors: half the blocks' weights again, on top of the fp32 ones. Stored in bf16 once, at
load (`load.py`), nothing is re-cast, nothing extra is saved, and the blocks take half the memory.

What is converted is exactly what autocast casts to bf16 anyway: the weight and bias of torch's Linear and of
transformers' Conv1D (GPT-2's: `addmm`, on autocast's bf16 list like `linear`) inside the decoder blocks. A cast is
round-to-nearest-even either way, so under autocast every product, every logit and every gradient is the number the
fp32-stored LM gives (tests/engine/lm/test_block_weights.py checks it bit for bit). The rest stays fp32: the
embeddings (looked up, which autocast never casts), the norms (autocast keeps them fp32) and the LM head (scored in
fp32, `precision.full_precision`, and tied to the embeddings in SmolLM2 and Llama-3.2). A LoRA adapter attached later
keeps its fp32 weights, with one difference at its birth: peft moves a new adapter to its base layer's dtype before
casting it back to fp32 to train (its `autocast_adapter_dtype`), so a fresh adapter's A matrices, drawn in fp32 from
the same seed, come out rounded to bf16, as they do on a GPU. Loaded adapter weights (a parent, a snapshot, the
reference slot) are copied in after that and stay exact; under autocast the adapters compute in bf16 anyway.

Outside autocast (a pass that runs without it, e.g. generation, or LETHE_PRECISION changed for a block) an fp32
input would meet a bf16 weight. So each converted layer computes as autocast would: a forward pre-hook casts its
input to the weight's dtype and a forward hook casts the output back to the input's dtype, the rest of the pass
unchanged. Under autocast both hooks return at once.

Where a whole LM is stored in bf16 (on a GPU under autocast, `placement.worker_placement`) nothing here applies.
The quantize attack merges and rounds a converted weight in fp32 and writes it back rounded to bf16, which is the
weight the fp32-stored LM computes with under autocast too; only its rounding grid is computed from the bf16 weight.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from worker.engine.lm.architecture import LINEAR_TYPES
from worker.engine.lm.blocks import decoder_blocks


def block_matmul_layers(lm: PreTrainedModel | PeftModel) -> list[torch.nn.Module]:
    """The Linear and Conv1D layers of the base LM inside `lm`'s decoder blocks (an attached LoRA adapter's own
    layers, `lora_A` and `lora_B`, are not among them)."""
    return [
        module
        for name, module in decoder_blocks(lm).named_modules()
        if isinstance(module, LINEAR_TYPES) and ".lora_" not in f".{name}"
    ]


def store_block_matmuls(lm: PreTrainedModel | PeftModel, dtype: torch.dtype) -> None:
    """Store the weight and bias of each Linear and Conv1D of `lm`'s decoder blocks in `dtype`, in place, with the
    hooks that let them compute outside autocast. Meant for a frozen base LM at load, before any adapter is
    attached (an adapter's layers are left as they are: they train in fp32). ValueError, with nothing converted,
    when one of those layers is trainable."""
    layers = block_matmul_layers(lm)
    trainable = [layer for layer in layers if any(p.requires_grad for p in layer.parameters(recurse=False))]
    if trainable:
        raise ValueError(
            f"{type(trainable[0]).__name__} in the decoder blocks is trainable: only frozen weights convert"
        )
    converted = {id(p) for layer in layers for p in layer.parameters(recurse=False)}
    for layer in layers:
        layer.to(dtype)
        _compute_as_under_autocast(layer)
    # transformers maps a safetensors file and an fp32 weight of an fp32 file is a view of it. Read once for the
    # conversion, the old weights' pages of the file stay resident as long as any tensor still views the mapping
    # (SmolLM2: 300 MB more RSS). So the weights left in fp32 (the embeddings, the norms, the head) get memory of
    # their own and the file's pages go with the last view. A tied parameter is one object: copied once, still tied.
    with torch.no_grad():
        for parameter in lm.parameters():
            if id(parameter) not in converted:
                parameter.data = parameter.data.clone()


def _compute_as_under_autocast(layer: torch.nn.Module) -> None:
    """Outside autocast, `layer` casts a floating input that is not in its weight's dtype to that dtype, and its
    output back to the input's dtype. The weight's dtype is read at each call: a copy of the LM made fp32 again
    (`.float()`) computes in fp32."""
    device_type = next(layer.parameters()).device.type
    restore: list[torch.dtype] = []  # the input dtype of the call in progress, if cast (a layer's calls never nest)

    def before(module: torch.nn.Module, args: tuple) -> tuple | None:
        restore.clear()  # a call that raised never reached `after`
        if torch.is_autocast_enabled(device_type) or not args or not isinstance(args[0], torch.Tensor):
            return None
        first, dtype = args[0], module.get_parameter("weight").dtype
        if not first.is_floating_point() or first.dtype == dtype:
            return None
        restore.append(first.dtype)
        return (first.to(dtype), *args[1:])

    def after(_module: torch.nn.Module, _args: tuple, output: Any) -> Any:
        if not restore:
            return None
        return output.to(restore.pop())

    layer.register_forward_pre_hook(before)
    layer.register_forward_hook(after)
