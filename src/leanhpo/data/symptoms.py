"""The nine DSM-5 depression symptoms of ReDSM5, and the label dirt the real files carry.

Everything downstream (label vectors, evidence lists, reports) is indexed by the order of
`SYMPTOMS`, so that order is part of the on-disk contract and must never change.
"""

from leanhpo.metric_names import SYMPTOMS

__all__ = ["LABEL_REPAIRS", "NON_SYMPTOM_LABELS", "SYMPTOMS", "SYMPTOM_DESCRIPTIONS"]

# Short plain-English paraphrases of the DSM-5 criteria A1-A9. The binary_pairs input format
# pairs one of these with the post, so they are written to be read by an encoder, not a clinician.
SYMPTOM_DESCRIPTIONS: dict[str, str] = {
    "DEPRESSED_MOOD": "Depressed mood most of the day, nearly every day: sad, empty or hopeless.",
    "ANHEDONIA": "Markedly diminished interest or pleasure in all, or almost all, activities.",
    "APPETITE_CHANGE": "Significant weight loss or gain, or a decrease or increase in appetite.",
    "SLEEP_ISSUES": "Insomnia or hypersomnia: sleeping too little or too much nearly every day.",
    "PSYCHOMOTOR": "Psychomotor agitation or retardation: restlessness or being slowed down.",
    "FATIGUE": "Fatigue or loss of energy nearly every day.",
    "WORTHLESSNESS": "Feelings of worthlessness or excessive or inappropriate guilt.",
    "COGNITIVE_ISSUES": "Diminished ability to think or concentrate, or indecisiveness.",
    "SUICIDAL_THOUGHTS": "Recurrent thoughts of death, suicidal ideation, or a suicide plan.",
}

# Misspellings found in the published annotations, mapped to the label they stand for.
LABEL_REPAIRS: dict[str, str] = {"LEEP_ISSUES": "SLEEP_ISSUES"}

# Labels the annotators used that are not DSM-5 criteria; their rows are dropped and counted.
NON_SYMPTOM_LABELS: frozenset[str] = frozenset({"SPECIAL_CASE"})

SYMPTOM_INDEX: dict[str, int] = {name: index for index, name in enumerate(SYMPTOMS)}
