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
# TOFU's truth ratio R, by the paper and by open-unlearning's code (worker/engine/metrics/qa.py); only rows with a
# paraphrased answer and perturbed answers count.
_TRUTH_RATIO_PAPER = (
    "R = arithmetic mean over the perturbed (wrong) answers of P(â|q)^(1/|â|) / P(ã|q)^(1/|ã|) of the paraphrased "
    "answer (TOFU, Maini et al. 2024, Eq. 1)"
)
_TRUTH_RATIO_OPEN_UNLEARNING = (
    "R' = exp(−mean over the perturbed answers of their mean token NLL) / (exp(−mean token NLL of the paraphrased "
    "answer) + 1e-10): the perturbed answers' normalized probabilities combined by their geometric mean, as "
    "open-unlearning's `truth_ratio` (src/evals/metrics/memorization.py) and TOFU's code do; R' ≤ R, equal with one "
    "perturbed answer"
)
_register(
    "truth_ratio",
    ("qa",),
    "qa",
    "remembers",
    f"Mean over rows of max(0, 1 − R), {_TRUTH_RATIO_PAPER}. TOFU's figure for retain-type sets: 1 = the truth is "
    "far likelier than the wrong answers, 0 = not preferred.",
)
_register(
    "truth_ratio_balance",
    ("qa",),
    "qa",
    "forgets",
    f"Mean over rows of min(R, 1/R), {_TRUTH_RATIO_PAPER}. 1 = true and wrong answers equally likely; TOFU's "
    "aggregate for the forget set.",
)
_register(
    "truth_ratio_open_unlearning",
    ("qa",),
    "qa",
    "remembers",
    f"Mean over rows of max(0, 1 − R'), {_TRUTH_RATIO_OPEN_UNLEARNING}. open-unlearning's `true_better` "
    "aggregator (retain-type sets).",
)
_register(
    "truth_ratio_balance_open_unlearning",
    ("qa",),
    "qa",
    "forgets",
    f"Mean over rows of min(R', 1/R'), {_TRUTH_RATIO_OPEN_UNLEARNING}. open-unlearning's `closer_to_1_better` "
    "aggregator (the forget set).",
)
_register(
    "forget_quality",
    ("qa",),
    "qa",
    "forgets",
    "TOFU's forget quality (Maini et al. 2024; open-unlearning `ks_test`): the p-value of the two-sided two-sample "
    "Kolmogorov–Smirnov test (scipy ks_2samp) between the per-row truth ratios R (TOFU paper, see truth_ratio; the "
    "raw R, not an aggregate of it) of forget-train under this stage's LM and under the base LM. Reported only when "
    "the job fine-tuned the rows in first, so that the base LM never learned them (TOFU's retain model); omitted "
    "otherwise, and without rows that have perturbed answers. Near 1 = no evidence that the LM differs from one that "
    "never learned the rows; low (TOFU uses 0.05) = it does. A p-value, not an effect size: with few rows it stays "
    "high whatever happened; `n` is the rows of each sample. No interval.",
    interval="none",
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

# Membership inference (worker/engine/metrics/privacy.py): members = forget-train, non-members = forget-heldout.
_MEMBERSHIP = (
    " Above 0.5 higher = remembers, and 0.5 is the goal after forgetting; well below 0.5 the members look less like "
    "training data than unseen rows: over-unlearning, which singles the forget set out, not better forgetting."
    " Members are forget-train, non-members forget-heldout; the AUC measures membership only when the job's fine-tune "
    "introduced the forget rows (then only forget-train was trained on). Without a fine-tune, or when the heldout "
    "rows share what the fine-tune taught (the same task or facts), an AUC away from 0.5 can come from differences "
    "between the splits or from generalization, not from training on the rows. 95% interval: stratified bootstrap "
    "(members and non-members resampled apart, seeded by the job's seed)."
)
_register(
    "mia_auc_loss",
    KINDS,
    "privacy",
    "remembers",
    "ROC AUC of telling members from non-members by the mean NLL of the target (LOSS attack, Yeom et al. 2018): "
    "P(a member's NLL < a non-member's), ties half; 1 = every member recognised, 0.5 = indistinguishable."
    + _MEMBERSHIP,
)
_register(
    "mia_auc_zlib",
    KINDS,
    "privacy",
    "remembers",
    "ROC AUC (oriented as mia_auc_loss) of the zlib attack: mean NLL / zlib-compressed bytes of the target text "
    "(Carlini et al. 2021)." + _MEMBERSHIP,
)
_register(
    "mia_auc_min_k",
    KINDS,
    "privacy",
    "remembers",
    "ROC AUC (oriented as mia_auc_loss) of Min-K% Prob: mean of the lowest 40% token log-probabilities (Shi et al. "
    "2024; k as in open-unlearning and MUSE)." + _MEMBERSHIP,
)
_register(
    "mia_auc_min_k_plus_plus",
    KINDS,
    "privacy",
    "remembers",
    "ROC AUC (oriented as mia_auc_loss) of Min-K%++: mean of the lowest 40% of (log p − μ) / σ, μ and σ of log p "
    "over the LM's next-token distribution (Zhang et al. 2024)." + _MEMBERSHIP,
)
# MUSE (Shi et al. 2024, arXiv 2407.06460) reports PrivLeak with its Min-K% AUC; Lethe reports it for every attack
# (privleak_min_k is MUSE's). Neither direction is better: 0 is the goal.
_PRIVLEAK = (
    "MUSE PrivLeak: (AUC − AUC_ref) / AUC_ref × 100, with MUSE's AUC = 1 − mia_auc_{attack} (P(a member looks less "
    "like training data than a non-member)) and AUC_ref the same of the reference LM on the same rows. {reference} "
    "0 = leaks as much as the reference (the goal); about −100 = members still recognised, as by a model that never "
    "unlearned; large positive = over-unlearned: members look less like training data than unseen rows, itself a "
    "leak (the forget set stands out), not better forgetting. 95% interval: bootstrap stratified across members and "
    "non-members and paired across the two LMs' scores of the same rows, seeded by the job's seed. Omitted where the "
    "reference's AUC is 0 (it recognises every member)."
)
for _attack in ("loss", "zlib", "min_k", "min_k_plus_plus"):
    _register(
        f"privleak_{_attack}",
        KINDS,
        "privacy",
        "neutral",
        _PRIVLEAK.format(
            attack=_attack,
            reference="The reference is the base LM, and this name is used only when the job fine-tuned the forget "
            "rows in first, so that the base LM never saw them (the role of MUSE's retrained model).",
        ),
        interval="paired_bootstrap",
    )
    _register(
        f"privleak_vs_base_{_attack}",
        KINDS,
        "privacy",
        "neutral",
        _PRIVLEAK.format(
            attack=_attack,
            reference="The reference is the base LM of a job without a fine-tune: it may have seen the forget rows in "
            "pretraining, so this compares with the LM before forgetting, not with a model that never saw the rows.",
        ),
        interval="paired_bootstrap",
    )
