"""Every metric Lethe reports: name, the dataset kinds it applies to, its family, definition, direction and the
95% interval its values carry (`worker/engine/metrics/intervals.py` draws them).

Torch-free: the API imports this to publish and validate metric names.
"""

from __future__ import annotations

from dataclasses import dataclass

from lethe.registry import Registry

KINDS = ("choice", "qa", "text")
FAMILIES = ("choice", "qa", "text", "privacy", "utility", "probe")
# What a higher value says about the LM and the data measured: it still remembers it, it has forgotten it,
# or neither.
DIRECTIONS = ("remembers", "forgets", "neutral")
# How a metric's 95% interval is drawn: Wilson's score interval of a proportion; a seeded percentile bootstrap over
# rows; the same with the rows scored before and after forgetting resampled together; none.
INTERVALS = ("wilson", "bootstrap", "paired_bootstrap", "none")


@dataclass(frozen=True)
class MetricSpec:
    """A metric as published: the row kinds it is measured on, its family, definition (with source), direction, and
    the kind of 95% interval its values carry (one of `INTERVALS`; most are means over rows: bootstrap)."""

    name: str
    kinds: tuple[str, ...]
    family: str
    description: str
    higher_means: str
    interval: str = "bootstrap"

    def __post_init__(self) -> None:
        if not self.kinds or any(kind not in KINDS for kind in self.kinds):
            raise ValueError(f"metric {self.name!r}: kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        if self.family not in FAMILIES:
            raise ValueError(f"metric {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        if self.higher_means not in DIRECTIONS:
            raise ValueError(f"metric {self.name!r}: higher_means must be one of {DIRECTIONS}")
        if self.interval not in INTERVALS:
            raise ValueError(f"metric {self.name!r}: interval must be one of {INTERVALS}, got {self.interval!r}")


METRICS: Registry[MetricSpec] = Registry("metric")


def _register(
    name: str, kinds: tuple[str, ...], family: str, higher_means: str, description: str, interval: str = "bootstrap"
) -> None:
    METRICS.register(name, MetricSpec(name, kinds, family, description, higher_means, interval))


# Multiple choice (worker/engine/metrics/choice_scores.py, choice.py, probes.py).
_register(
    "accuracy",
    ("choice",),
    "choice",
    "remembers",
    "Fraction of rows whose answer has the highest summed log-probability of its tokens after the prompt "
    "(lm-evaluation-harness `acc`). Interval: Wilson.",
    interval="wilson",
)
_register(
    "forget_gap",
    ("choice",),
    "choice",
    "remembers",
    "Accuracy minus chance (the mean of 1 / number of choices); 0 = no better than guessing. Interval: accuracy's "
    "Wilson interval minus chance; where rows have different numbers of choices, a bootstrap over rows of "
    "(correct − 1 / the row's number of choices).",
    interval="wilson",
)
_register(
    "forget_ratio",
    ("choice",),
    "choice",
    "forgets",
    "(accuracy before forgetting − accuracy after) / (accuracy before − chance): the share of the above-chance "
    "accuracy that forgetting removed; omitted when accuracy before was not above chance. Interval: paired "
    "bootstrap (the same rows before and after forgetting resampled together; chance fixed).",
    interval="paired_bootstrap",
)
_register(
    "correct_probability",
    ("choice",),
    "choice",
    "remembers",
    "Mean over rows of the answer's probability renormalized over the row's choices (softmax of the summed "
    "log-likelihoods); chance is 1 / number of choices.",
)
_register(
    "probe_accuracy",
    ("choice",),
    "probe",
    "remembers",
    "Per layer: accuracy on forget-heldout of a linear probe fitted on forget-train hidden states (last token of "
    "each prompt + choice; label = correct choice); knowledge still linearly readable from that layer. Interval: "
    "Wilson over the heldout rows.",
    interval="wilson",
)

# Question answering (TOFU-style; worker/engine/metrics/qa.py).
_register(
    "answer_probability",
    ("qa",),
    "qa",
    "remembers",
    "Mean over rows of P(answer | question)^(1/|answer|) = exp(mean token log-probability of the answer) "
    "(TOFU Probability; open-unlearning `probability`).",
)
_register(
    "rouge_l_recall",
    ("qa",),
    "qa",
    "remembers",
    "Mean over rows of the ROUGE-L recall of the greedy answer against the true answer (TOFU ROUGE; "
    "open-unlearning `rougeL_recall`, rouge_score with Porter stemming).",
)
_register(
    "truth_ratio",
    ("qa",),
    "qa",
    "remembers",
    "Mean over rows of max(0, 1 − R), R = mean length-normalized probability of the perturbed (wrong) answers / "
    "that of the paraphrased answer (TOFU Eq. 1, arithmetic mean as in the paper). TOFU's figure for retain "
    "sets; only rows with a paraphrased answer and perturbed answers count.",
)
_register(
    "truth_ratio_balance",
    ("qa",),
    "qa",
    "forgets",
    "Mean over rows of min(R, 1/R) with R as in truth_ratio: 1 = true and wrong answers equally likely. TOFU's "
    "code aggregate for the forget set (open-unlearning `closer_to_1_better`).",
)
_register(
    "extraction_strength",
    ("qa",),
    "qa",
    "remembers",
    "Mean over rows of 1 − k/|answer|, k the shortest teacher-forced answer prefix after which every answer "
    "token is the argmax (Carlini et al. 2021; open-unlearning `extraction_strength`).",
)
_register(
    "exact_memorization",
    ("qa",),
    "qa",
    "remembers",
    "Mean over rows of the fraction of answer tokens that are the teacher-forced argmax (Tirumala et al. 2022).",
)

# Passages (MUSE-style; worker/engine/metrics/text.py).
_register(
    "verbatim_memorization",
    ("text",),
    "text",
    "remembers",
    "Mean over passages of the ROUGE-L F1 of the greedy continuation of the passage's first tokens (32 by "
    "default) against its next tokens (up to 128 by default) (MUSE VerbMem).",
)
_register(
    "perplexity",
    ("text",),
    "text",
    "forgets",
    "exp(total NLL / total tokens) of the split's passages, each after an EOS context (token-weighted). "
    "Interval: bootstrap over passages of the ratio total NLL / total tokens (each passage's NLL and tokens "
    "resampled together).",
)

_register(
    "text_probability",
    ("text",),
    "text",
    "remembers",
    "Mean over passages of P(passage)^(1/|passage|) = exp(mean token log-probability) after an EOS context; "
    "the score a text forget split is tracked by during training (stop target, utility floor).",
)

# Membership inference (worker/engine/metrics/privacy.py): members = the forget set, non-members = a heldout set.
_register(
    "mia_auc_loss",
    KINDS,
    "privacy",
    "remembers",
    "ROC AUC of telling members from non-members by the mean NLL of the target (LOSS attack, Yeom et al. 2018); "
    "0.5 = indistinguishable.",
)
_register(
    "mia_auc_zlib",
    KINDS,
    "privacy",
    "remembers",
    "ROC AUC of the zlib attack: mean NLL / zlib-compressed bytes of the target text (Carlini et al. 2021).",
)
_register(
    "mia_auc_min_k",
    KINDS,
    "privacy",
    "remembers",
    "ROC AUC of Min-K% Prob: mean of the lowest 40% token log-probabilities (Shi et al. 2024; k as in "
    "open-unlearning and MUSE).",
)
_register(
    "mia_auc_min_k_plus_plus",
    KINDS,
    "privacy",
    "remembers",
    "ROC AUC of Min-K%++: mean of the lowest 40% of (log p − μ) / σ, μ and σ of log p over the LM's next-token "
    "distribution (Zhang et al. 2024).",
)
# MUSE reports PrivLeak with its Min-K% AUC; Lethe reports it for every attack (privleak_min_k is MUSE's).
for _attack in ("loss", "zlib", "min_k", "min_k_plus_plus"):
    _register(
        f"privleak_{_attack}",
        KINDS,
        "privacy",
        "remembers",
        f"(mia_auc_{_attack} − the same AUC of the reference) / the reference's × 100 (MUSE PrivLeak). MUSE's "
        "reference is a retrained model; Lethe's is the base LM (none retrained exists), so 0 = leaks as much as "
        "the base LM, > 0 = the forget set is more recognisable as trained-on than before.",
    )
