"""The LM's anatomy: which decoder block an adapter parameter sits in."""

from worker.engine.lm.architecture import describe
from worker.engine.lm.load import LoadedLM


def test_block_of_reads_the_block_index_of_a_parameter_name(tiny_base: LoadedLM) -> None:
    architecture = describe(tiny_base.lm)
    assert architecture.block_of("base_model.model.model.layers.11.mlp.up_proj.lora_A.default.weight") == 11
    assert architecture.block_of("model.layers.0.self_attn.q_proj.lora_B.default.weight") == 0
    assert architecture.block_of("base_model.model.lm_head.weight") is None
