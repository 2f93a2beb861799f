"""Forgetting methods as the API sees them: names, descriptions, validated params (torch-free).

The API validates a request's `method` and `method_params` against METHODS and publishes
`json_schema()`; the worker parses the same params and runs the torch implementation each spec names by its
import path (`implementation`), resolved only in the worker: this module never imports the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from lethe.registry import Registry
from lethe.rows import DatasetKind

# target: forget-train at its target (stop_at_target); heldout_below_chance: forget-heldout accuracy below chance
# (Unforgettable Generalization's rule); budget: no early stop.
StopRuleName = Literal["target", "heldout_below_chance", "budget"]


class MethodParams(BaseModel):
    """Parameters every method shares: optimiser, schedule, LoRA shape and the chance stop."""

    model_config = ConfigDict(extra="forbid")

    # LoRA paper (Hu et al. 2021, RoBERTa-base on GLUE) used 4e-4..5e-4. Measured here: on SmolLM2-135M,
    # random_label at 5e-4 (batch 8) brings a known 36-row task to chance in 3 epochs; 1e-4 barely moves it.
    learning_rate: float = Field(5e-4, gt=0, le=1, description="AdamW learning rate of the LoRA parameters.")
    # Lethe default: with stop_at_chance the run usually ends earlier.
    epochs: int = Field(5, ge=1, le=100, description="Passes over the forget-train rows.")
    max_steps: int | None = Field(
        None, ge=1, le=1_000_000, description="Stop after this many optimiser steps; null means no cap."
    )
    # Lethe default: fits SmolLM2-135M on a 2-core CPU; raise it on a GPU.
    batch_size: int = Field(8, ge=1, le=512, description="Rows per optimiser step (also the scoring batch).")
    # peft's LoraConfig default rank.
    lora_rank: int = Field(8, ge=1, le=256, description="Rank r of the LoRA matrices on every linear layer.")
    # Convention alpha = 2r (LoRA update scaled by alpha / r = 2).
    lora_alpha: int = Field(16, ge=1, le=1024, description="LoRA alpha; the update is scaled by alpha / rank.")
    # Seed paper protocol: forget until forget-train predictions are near random.
    stop_at_target: bool = Field(
        True,
        description=(
            "Stop at the first evaluation where forget-train is forgotten: for choice rows accuracy <= chance + "
            "target_tolerance; for qa and text rows the mean answer (text) probability <= its forget-heldout value "
            "before forgetting + target_tolerance (the LM knows the trained rows no better than unseen ones)."
        ),
    )
    # Lethe default: 5 points of accuracy (or of probability for qa/text).
    target_tolerance: float = Field(
        0.05, ge=0, le=1, description="How close to the target counts as forgotten for stop_at_target."
    )
    # Lethe default: once per epoch, as the seed protocol checks.
    evaluate_every: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description=(
            "Evaluate forget-train and retain every this many optimiser steps (the curves); null = every epoch."
        ),
    )
    # Lethe default: off. A bound like 0.05 keeps retain within 5 points of its value before forgetting.
    utility_floor: float | None = Field(
        None,
        gt=0,
        le=1,
        description=(
            "Largest allowed drop of the mean retain score (accuracy, or answer/text probability) from before "
            "forgetting. When an evaluation breaks it, training stops and the best checkpoint that kept it (most "
            "forgotten) is restored; null = no floor."
        ),
    )

    def needs_retain(self) -> bool:
        """Whether training with these params draws retain batches (then the run needs retain rows)."""
        return False

    def epoch_rows(self, forget_rows: int, retain_rows: int) -> int:
        """The rows an epoch passes over, a batch a step: the forget-train rows (lwf: the retain rows)."""
        return forget_rows

    def interleaved_steps(self, epoch_steps: int) -> int:
        """Optimiser steps a run takes between its `epoch_steps` epoch batches (lwf: its unlearning steps)."""
        return 0

    def stop_rule(self) -> StopRuleName:
        """When forgetting stops early: `target` (stop_at_target), or `budget` (only epochs and max_steps end it)."""
        return "target" if self.stop_at_target else "budget"

    def adapted_layers(self, n_layers: int) -> list[int] | None:
        """The decoder blocks of an LM with `n_layers` blocks that get LoRA adapters; None = every block."""
        return None

    def named_layers(self) -> list[tuple[str, int]]:
        """Each decoder block these params name, with its field (`trained_layers[1]`), so that the API can check it
        against the base model's depth. A param that names a block must be listed here (tests/lethe/test_methods.py
        checks every `*layer*` field); a null one (a depth-relative default) names none."""
        return []


# Li et al. (WMDP, arXiv 2403.03218) steer Zephyr-7B at layer 7 of 32; Lethe keeps that relative depth for any LM.
RELATIVE_LAYER = 7 / 32


def relative_layer(n_layers: int) -> int:
    """The decoder block at 7/32 of the depth (RMU's layer 7 of Zephyr-7B's 32) of an LM with `n_layers` blocks."""
    return min(round(RELATIVE_LAYER * n_layers), n_layers - 1)


Refusal = Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class PluginParams(MethodParams):
    """The shared params plus the plug-ins any ascent-style method can switch on (all off by default)."""

    # Lethe default: off.
    retain_kl_weight: float = Field(
        0.0,
        ge=0,
        le=1e4,
        description=(
            "Weight of an extra retain term: KL(pi_ref || pi_theta) averaged over the retain targets' tokens, "
            "pi_ref being the LM before forgetting (the fine-tuned LM after a fine-tune, else the base LM); 0 = off."
        ),
    )
    # Lethe default: off.
    project_gradients: bool = Field(
        False,
        description=(
            "Geometric-disentanglement unlearning (Zhou et al., arXiv 2511.17100): before each step remove from "
            "the forget gradient its component along the retain gradient (both flattened over all LoRA "
            "parameters), so that the forget part of the step leaves the retain loss unchanged to first order. "
            "Needs a retain term (alpha or retain_kl_weight > 0)."
        ),
    )
    # Lethe default: off. The noise is absolute: hidden-state scales differ between LMs and layers.
    rna_noise_std: float = Field(
        0.0,
        ge=0,
        le=100,
        description=(
            "Random Noise Augmentation (Dang et al., arXiv 2501.19202): standard deviation of Gaussian noise "
            "added to the output of decoder block rna_layer in the trained LM's forward passes on retain batches "
            "(the retain term then teaches robustness to perturbed representations); 0 = off. Needs a retain "
            "term (alpha or retain_kl_weight > 0)."
        ),
    )
    # Lethe default: the layer RMU steers by default.
    rna_layer: int | None = Field(
        None,
        ge=0,
        le=1000,
        description="Decoder block (0-based) whose output RNA perturbs; null = the block at 7/32 of the LM's depth.",
    )

    def has_retain_term(self) -> bool:
        """Whether the loss has a retain term (the method's own or the retain-KL plug-in)."""
        return self.retain_kl_weight > 0

    def named_layers(self) -> list[tuple[str, int]]:
        return [("rna_layer", self.rna_layer)] if self.rna_layer is not None else []

    def needs_retain(self) -> bool:
        return self.has_retain_term()

    @model_validator(mode="after")
    def _plugins_have_a_retain_term(self) -> PluginParams:
        if (self.project_gradients or self.rna_noise_std > 0) and not self.has_retain_term():
            raise ValueError(
                "project_gradients and rna_noise_std act on a retain term: set alpha or retain_kl_weight > 0"
            )
        return self


class GradientAscentParams(PluginParams):
    """Gradient ascent: the shared params and the plug-ins."""


class RandomLabelParams(MethodParams):
    """Random-label fine-tuning: the shared params and a choice of stopping rule."""

    # Lethe default: the shared target. Zhang, Choshen & Andreas (arXiv 2409.02228, section 3) train with random
    # labels "for 100 epochs or until test accuracy < 0.5" on binary tasks: heldout_below_chance.
    stopping: StopRuleName = Field(
        "target",
        description=(
            "target = stop when forget-train reaches chance + target_tolerance (when stop_at_target); "
            "heldout_below_chance = the paper's rule: stop at the first evaluation where forget-heldout accuracy is "
            "strictly below chance (stop_reason heldout_below_chance; the paper caps it at 100 epochs: raise "
            "epochs); budget = a fixed budget: no early stop, train for max_steps optimiser steps (required), "
            "epochs only capping it (stop_reason max_steps, or epochs if they run out first)."
        ),
    )

    def stop_rule(self) -> StopRuleName:
        return super().stop_rule() if self.stopping == "target" else self.stopping

    @model_validator(mode="after")
    def _budget_has_steps(self) -> RandomLabelParams:
        if self.stopping == "budget" and self.max_steps is None:
            raise ValueError("stopping=budget needs max_steps (the number of optimiser steps to train for)")
        return self


class RetainParams(PluginParams):
    """Methods whose loss is gamma * forget loss + alpha * retain loss (open-unlearning's GradDiff and its kin)."""

    # open-unlearning configs/trainer/GradDiff.yaml (gamma: 1.0).
    gamma: float = Field(1.0, gt=0, le=1e4, description="Weight gamma of the forget loss.")
    # open-unlearning configs/trainer/GradDiff.yaml (alpha: 1.0).
    alpha: float = Field(
        1.0, ge=0, le=1e4, description="Weight alpha of the retain loss; 0 = no retain term (no retain rows needed)."
    )
    # open-unlearning configs/trainer/GradDiff.yaml (retain_loss_type: NLL).
    retain_loss: Literal["nll", "kl"] = Field(
        "nll",
        description=(
            "Retain loss: nll = mean NLL of the retain rows' targets; kl = KL(pi_ref || pi_theta) averaged over "
            "the retain targets' tokens, pi_ref being the LM before forgetting (the fine-tuned LM after a fine-tune, "
            "else the base LM)."
        ),
    )

    def has_retain_term(self) -> bool:
        return self.alpha > 0 or super().has_retain_term()


class GradDiffParams(RetainParams):
    """Gradient difference: ascent on forget, descent on retain."""


class NPOParams(RetainParams):
    """Negative preference optimisation with a retain term (NPO+RT)."""

    # Zhang et al. 2024 (arXiv 2404.05868) and open-unlearning configs/trainer/NPO.yaml (beta: 0.1).
    beta: float = Field(
        0.1, gt=0, le=100, description="Inverse temperature beta of NPO; as beta -> 0 NPO becomes gradient ascent."
    )


class SimNPOParams(RetainParams):
    """SimNPO: NPO without the reference LM, on the length-normalised NLL, with a margin."""

    # open-unlearning configs/trainer/SimNPO.yaml (beta: 4.5), tuned by Fan et al. for TOFU.
    beta: float = Field(4.5, gt=0, le=100, description="Inverse temperature beta applied to the per-token NLL.")
    # open-unlearning configs/trainer/SimNPO.yaml (delta: 0.0) = `gamma` of OPTML-Group/Unlearn-Simple's config.
    delta: float = Field(
        0.0, ge=0, le=100, description="Margin delta subtracted from the per-token NLL (the paper's gamma / beta)."
    )
    # open-unlearning configs/trainer/SimNPO.yaml (gamma: 0.125) = `npo_coeff` of Unlearn-Simple's config.
    gamma: float = Field(0.125, gt=0, le=1e4, description="Weight gamma of the forget loss.")


class IdkParams(RetainParams):
    """DPO towards refusals: prefer an "I don't know" answer to the forget target."""

    # open-unlearning configs/trainer/DPO.yaml (beta: 0.1), its IdkDPO.
    beta: float = Field(0.1, gt=0, le=100, description="Inverse temperature beta of the DPO loss.")
    # TOFU's 100 refusals (locuslab/tofu data/idontknow.jsonl), in worker/engine/methods/idk_refusals.txt.
    refusals: list[Refusal] | None = Field(
        None,
        min_length=1,
        max_length=10_000,
        description=(
            "Refusal answers; each forget row is paired with one drawn uniformly (seeded) anew every epoch. "
            "null = TOFU's 100 'I don't know' answers."
        ),
    )


class RMUParams(MethodParams):
    """Representation misdirection: steer forget activations at one layer to a random direction."""

    # Lethe default: Li et al.'s layer 7 of Zephyr-7B's 32, at the same relative depth.
    layer: int | None = Field(
        None,
        ge=0,
        le=1000,
        description=(
            "Decoder block (0-based) whose output is steered: the hidden state after block `layer`, i.e. "
            "hidden_states[layer + 1] in transformers' numbering; null = the block at 7/32 of the LM's depth."
        ),
    )
    # Li et al. update layers layer-2..layer (WMDP rmu/unlearn.py: layer_ids 5,6,7 for layer_id 7).
    trained_layers: list[Annotated[int, Field(ge=0, le=1000)]] | None = Field(
        None,
        min_length=1,
        description=(
            "Decoder blocks that get LoRA adapters (none after `layer`: they cannot change its output); "
            "null = layer-2, layer-1 and layer."
        ),
    )
    # Lethe default: null = adaptive. Li et al.'s c = 6.5 was tuned for Zephyr-7B's activations at its layer 7; a
    # fixed c means nothing on another LM (hidden-state norms differ by orders of magnitude between LMs and layers).
    steering_coefficient: float | None = Field(
        None,
        gt=0,
        le=1e4,
        description=(
            "Fixed coefficient c: forget activations are pushed towards c * u, u a fixed random unit vector "
            "(Li et al. used 6.5 on Zephyr-7B). null = adaptive: c = steering_scale * the mean norm of the "
            "steered block's output on the forget-train rows, measured once before forgetting."
        ),
    )
    # Adaptive RMU (Dang et al., 'On Effects of Steering Latent Representation for LLM Unlearning', AAAI 2025,
    # arXiv 2408.06223): c = beta * mean |h_frozen(x_forget)| at the layer; its code's default scale is 5.0.
    steering_scale: float = Field(
        5.0,
        gt=0,
        le=1000,
        description=(
            "beta of adaptive RMU: c = beta * mean over forget-train rows of the mean over their tokens of "
            "|h_ref|, h_ref the steered block's output in the LM before forgetting. Unused when "
            "steering_coefficient is set."
        ),
    )
    # Lethe default: every linear layer, as every other method. WMDP's rmu/unlearn.py updates only parameter 6 of
    # each of layer_ids (param_ids "6" = mlp.down_proj.weight; open-unlearning's RMU: layers.(5|6|7).mlp.down_proj).
    trained_modules: Literal["all", "down_proj"] = Field(
        "all",
        description=(
            "all = train the LoRA adapters of every linear layer of trained_layers; down_proj = only those of the "
            "MLP's output projection (the WMDP code's choice; down_proj in Llama-like LMs and Phi-3, dense_4h_to_h "
            "in GPT-NeoX, the MLP's c_proj in GPT-2), the others frozen at their values before forgetting. "
            "down_proj trains fewer weights and needs more steps: on SmolLM2 without a fine-tune its 20 default "
            "steps took a choice task's forget-train accuracy from 0.64 to 0.60 only, short of the target."
        ),
    )
    # Li et al. for Zephyr-7B: alpha = 1200. With an adaptive c both terms grow with the squared activation norm,
    # so their balance does not depend on the LM's scale.
    alpha: float = Field(
        1200.0,
        ge=0,
        le=1e6,
        description="Weight alpha of the retain loss (activations kept close to the LM's before forgetting).",
    )

    def needs_retain(self) -> bool:
        return self.alpha > 0

    def named_layers(self) -> list[tuple[str, int]]:
        named = [("layer", self.layer)] if self.layer is not None else []
        return named + [(f"trained_layers[{index}]", layer) for index, layer in enumerate(self.trained_layers or [])]

    def steered_layer(self, n_layers: int) -> int:
        """The decoder block RMU steers in an LM of `n_layers` blocks."""
        layer = self.layer if self.layer is not None else relative_layer(n_layers)
        if layer >= n_layers:
            raise ValueError(f"rmu layer {layer} does not exist: the LM has {n_layers} decoder blocks")
        return layer

    def adapted_layers(self, n_layers: int) -> list[int]:
        """trained_layers, or layer-2..layer (Li et al.): blocks after the steered one cannot change its output."""
        layer = self.steered_layer(n_layers)
        layers = self.trained_layers if self.trained_layers is not None else range(max(layer - 2, 0), layer + 1)
        if max(layers) > layer:
            raise ValueError(f"rmu trained_layers after layer {layer} cannot change its output")
        return sorted(layers)

    @model_validator(mode="after")
    def _trained_layers_reach_the_layer(self) -> RMUParams:
        if self.trained_layers is not None:
            if len(set(self.trained_layers)) != len(self.trained_layers):
                raise ValueError("trained_layers must not repeat a layer")
            if self.layer is not None and max(self.trained_layers) > self.layer:
                raise ValueError(f"trained_layers after layer {self.layer} cannot change its output")
        return self


# LWF's paper (arXiv 2505.19715) could not be read beyond its abstract and secondary summaries, nor its code found:
# every default below is Lethe's own, with its reason beside it, and the method is published as experimental.
class LWFParams(MethodParams):
    """Fine-tuning on the learning data (retain rows), ascending on the most Fisher-conflicting self-generated texts
    every `interval` steps."""

    # Lethe default: as every method's; an LWF epoch is a pass over the learning data, not over the forget rows.
    epochs: int = Field(
        5,
        ge=1,
        le=100,
        description=(
            "Passes over the learning data (the retain rows), as LWF's schedule iterates over its learning task; "
            "the unlearning steps come on top, every `interval` learning steps."
        ),
    )
    # Lethe default: long enough for an answer and a sentence after it; generation is greedy, so cost grows with it.
    max_new_tokens: int = Field(
        32,
        ge=1,
        le=1024,
        description=(
            "Tokens the LM before forgetting (the fine-tuned LM after a fine-tune, else the base LM) generates "
            "greedily after each forget row's context; the generated continuations, not the rows' true targets, "
            "are what gradient ascent is applied to."
        ),
    )
    # Lethe default: a few dozen tokens ask for the passage's continuation without giving most of it away.
    text_prompt_tokens: int = Field(
        32,
        ge=1,
        le=1024,
        description=(
            "For text rows (whose context is empty) the prompt is the passage's first this many tokens, at most "
            "half of the passage, so that a continuation of it is left to generate."
        ),
    )
    # Lethe default: half. The paper unlearns only its high-confidence texts; its fraction could not be read.
    top_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description=(
            "Fraction of the generated texts unlearned: those with the highest forgetting confidence "
            "(ceil(fraction * n) texts, ties to the earlier row). Below 1 some forget-train rows are never "
            "unlearned at all: at the default 0.5, half of them. Set 1 to unlearn every row's text."
        ),
    )
    # Lethe default: an unlearning step after every learning step, the most unlearning the schedule allows.
    interval: int = Field(
        1,
        ge=1,
        le=1_000,
        description=(
            "N_u: after every this many fine-tuning steps (NLL on a batch of the learning data, the retain rows) "
            "comes one gradient-ascent step on a batch of the selected generated texts."
        ),
    )
    # Lethe default: enough rows for a stable diagonal estimate; one backward pass each.
    fisher_rows: int = Field(
        128,
        ge=1,
        le=100_000,
        description=(
            "Retain rows (a seeded sample) whose per-row gradients estimate the diagonal Fisher information of "
            "the LoRA parameters that weights the forgetting confidence."
        ),
    )

    def needs_retain(self) -> bool:
        """Always: the retain rows are the learning data and give the Fisher information."""
        return True

    def epoch_rows(self, forget_rows: int, retain_rows: int) -> int:
        """An epoch passes over the learning data, the retain rows."""
        return retain_rows

    def interleaved_steps(self, epoch_steps: int) -> int:
        """One unlearning step after every `interval` learning steps but the last: (L − 1) // N_u for L of them."""
        return max(epoch_steps - 1, 0) // self.interval


@dataclass(frozen=True)
class MethodSpec:
    """A method as published by the API: name, description and params model."""

    name: str
    description: str
    params_model: type[MethodParams]
    # "module:function" of the torch implementation (params, seed) -> Objective, imported only by the worker.
    implementation: str
    # The dataset kinds the method can forget (choice|qa|text).
    kinds: tuple[DatasetKind, ...] = ("choice", "qa", "text")
    # Whether the method is reconstructed from incomplete sources (its paper's equations or code unreadable);
    # `reconstructed` then says what was reconstructed and how.
    experimental: bool = False
    reconstructed: str | None = None

    def __post_init__(self) -> None:
        if self.experimental != (self.reconstructed is not None):
            raise ValueError(f"method {self.name}: an experimental method says what is reconstructed, and only it")

    def json_schema(self) -> dict[str, Any]:
        """JSON schema of the method's params."""
        return self.params_model.model_json_schema()

    def parse(self, params: dict[str, Any]) -> MethodParams:
        """Validated params with defaults filled in (pydantic ValidationError on bad input)."""
        return self.params_model.model_validate(params)

    def needs_retain(self, params: MethodParams) -> bool:
        """Whether the method, with these params, trains on retain rows."""
        return params.needs_retain()


# Every method's defaults on the bundled SmolLM2-135M-Instruct without a fine-tune stage, measured by
# bench/method_defaults.py (bench/method_defaults.json; 2026-11-30, AMD EPYC, 1 torch thread on a shared 2-core
# machine): issue 10's 50 rows "Question: What is {a} plus {b}?" with the true sum and a near miss, 25 forget-train
# and 25 forget-heldout, 8 ARC-Easy retain rows, seed 0; target = chance + 0.05 = 0.55 forget-train accuracy.
#   method (params)                  reached  stop_reason  steps  forget-train  forget-heldout  seconds
#   gradient_ascent                  yes      target       16     0.64 -> 0.52  0.60 -> 0.36    76
#   random_label                     no       epochs       20     0.64 -> 0.72  0.60 -> 0.92    274
#   random_label (20 epochs, paper)  no       epochs       80     0.64 -> 0.56  0.60 -> 0.76    423
#   grad_diff                        yes      target       4      0.64 -> 0.52  0.60 -> 0.44    45
#   npo                              yes      target       4      0.64 -> 0.52  0.60 -> 0.48    57
#   simnpo                           no       epochs       20     0.64 -> 0.64  0.60 -> 0.48    127
#   idk                              yes      target       8      0.64 -> 0.52  0.60 -> 0.40    112
#   rmu                              yes      target       20     0.64 -> 0.52  0.60 -> 0.52    279
#   rmu (trained_modules=down_proj)  no       epochs       20     0.64 -> 0.60  0.60 -> 0.60    96
#   rmu (steering_coefficient=6.5)   no       epochs       20     0.64 -> 0.56  0.60 -> 0.52    70
#   lwf                              no       epochs       10     0.64 -> 0.76  0.60 -> 0.64    115
# One row of 25 is 0.04: rmu's adaptive c and Li et al.'s c = 6.5 differ by one row here. The descriptions of the
# methods that missed say what they need; lwf's is being rewritten with its schedule (measured before that).
METHODS: Registry[MethodSpec] = Registry("method")

METHODS.register(
    "gradient_ascent",
    MethodSpec(
        name="gradient_ascent",
        implementation="worker.engine.methods.gradient_ascent:build",
        description=(
            "Gradient ascent on the forget-train rows: minimise loss = -NLL of the true target's tokens given the "
            "context (choice, answer or passage), i.e. push its probability down."
        ),
        params_model=GradientAscentParams,
    ),
)
METHODS.register(
    "random_label",
    MethodSpec(
        name="random_label",
        implementation="worker.engine.methods.random_label:build",
        description=(
            "Random-label fine-tuning (Zhang, Choshen & Andreas, 'Unforgettable Generalization in Language "
            "Models', arXiv 2409.02228): fine-tune on the forget-train rows with each answer replaced by a "
            "label drawn uniformly at random from the row's choices, drawn anew every epoch. Needs a fine-tune "
            "stage first, as in the paper: on an LM that only half knows the task, random labels first teach the "
            "answer format (on SmolLM2 without a fine-tune the defaults raised forget-train accuracy from 0.64 to "
            "0.72 and forget-heldout from 0.60 to 0.92; 80 steps still left forget-train at 0.56, above its target)."
        ),
        params_model=RandomLabelParams,
        kinds=("choice",),
    ),
)
METHODS.register(
    "grad_diff",
    MethodSpec(
        name="grad_diff",
        implementation="worker.engine.methods.grad_diff:build",
        description=(
            "Gradient difference (open-unlearning GradDiff): loss = gamma * (-NLL of the forget targets) + alpha * "
            "retain loss, the retain loss being the retain targets' NLL or KL(pi_ref || pi_theta) on them."
        ),
        params_model=GradDiffParams,
    ),
)
METHODS.register(
    "npo",
    MethodSpec(
        name="npo",
        implementation="worker.engine.methods.npo:build",
        description=(
            "Negative preference optimisation (Zhang et al., arXiv 2404.05868) with a retain term: loss = gamma * "
            "mean -(2/beta) log sigmoid(-beta * (log pi_theta(y|x) - log pi_ref(y|x))) + alpha * retain loss, with "
            "summed log-probabilities of the forget target y and pi_ref the LM before forgetting (the fine-tuned LM "
            "after a fine-tune, else the base LM)."
        ),
        params_model=NPOParams,
    ),
)
METHODS.register(
    "simnpo",
    MethodSpec(
        name="simnpo",
        implementation="worker.engine.methods.simnpo:build",
        description=(
            "SimNPO (Fan et al., arXiv 2410.07163), reference-free: loss = gamma * mean -(2/beta) log sigmoid(beta * "
            "(NLL(y|x) / |y| - delta)) + alpha * retain loss, |y| being the forget target's token count. Its "
            "TOFU-tuned defaults (gamma = 0.125 against alpha = 1) forget slowly: on SmolLM2 without a fine-tune "
            "stage they left a choice task's forget-train accuracy where it was (0.64) after 20 steps; give it a "
            "fine-tune stage, more steps or a larger gamma (not measured here)."
        ),
        params_model=SimNPOParams,
    ),
)
METHODS.register(
    "idk",
    MethodSpec(
        name="idk",
        implementation="worker.engine.methods.idk:build",
        description=(
            "DPO towards refusals (open-unlearning IdkDPO): each forget row's refusal r (drawn from a refusal set "
            "every epoch) is preferred to its true target y: loss = gamma * mean -(2/beta) log sigmoid(beta * "
            "((log pi_theta(r|x) - log pi_ref(r|x)) - (log pi_theta(y|x) - log pi_ref(y|x)))) + alpha * retain "
            "loss. A refusal follows a choice row's prompt as a choice would. Choice and qa rows (a text row has "
            "no question to refuse)."
        ),
        params_model=IdkParams,
        kinds=("choice", "qa"),
    ),
)
METHODS.register(
    "rmu",
    MethodSpec(
        name="rmu",
        implementation="worker.engine.methods.rmu:build",
        description=(
            "Representation misdirection for unlearning (Li et al., WMDP, arXiv 2403.03218): at decoder block "
            "`layer`, loss = mean over forget tokens of |h_theta - c * u|^2 / d + alpha * mean over retain tokens "
            "of |h_theta - h_ref|^2 / d, u a fixed random unit vector, d the hidden size, h_ref the LM's "
            "activation with its adapter disabled. c is adaptive by default (Dang et al., arXiv 2408.06223): "
            "steering_scale * the mean norm of the layer's activations on the forget-train rows before forgetting, "
            "so that it fits any LM's scale. Only trained_layers get LoRA adapters (with trained_modules=down_proj "
            "only those of their MLP's output projection train, as WMDP's code)."
        ),
        params_model=RMUParams,
    ),
)
METHODS.register(
    "lwf",
    MethodSpec(
        name="lwf",
        implementation="worker.engine.methods.lwf:build",
        description=(
            "Learning With Forgetting (Jiang et al., 'Graceful Forgetting in Generative Language Models', arXiv "
            "2505.19715), experimental: the LM before forgetting (the fine-tuned LM after a fine-tune) greedily "
            "continues each forget row's context (a text row's: the passage's beginning); each continuation x is "
            "scored by its forgetting confidence sum_i F_i g_i(x)^2, g = gradient of its NLL over the LoRA "
            "parameters, F = diagonal empirical Fisher information of the retain rows (the learning data). "
            "Training passes over the learning data (loss = NLL) and, after every `interval` such steps, takes one "
            "gradient-ascent step (loss = -NLL) on a batch of the top_fraction most confident continuations. With "
            "top_fraction < 1 the other rows are never unlearned (half of them at the default 0.5); the job's "
            "method outcome counts them."
        ),
        params_model=LWFParams,
        experimental=True,
        reconstructed=(
            "Only the paper's abstract and secondary summaries could be read, and no code by its authors was found. "
            "From them: self-generated texts (top-1 greedy continuations), Fisher-weighted forgetting confidence, "
            "periodic gradient ascent on the high-confidence texts while fine-tuning on the learning task. "
            "Reconstructed by Lethe: the confidence formula (the squared length, in the diagonal Fisher metric of "
            "the learning data at the LM before forgetting, of the update a text asks for), that it is computed once "
            "before training, the retain rows as the learning task, one ascent step after every `interval` "
            "learning steps, and every default (top_fraction, interval, max_new_tokens, fisher_rows)."
        ),
    ),
)
