"""Data layer: ReDSM5 sources, loading and cleaning, seeded splits and the sample generator.

Pure Python on purpose (no torch, no pandas): it runs in the lightweight prepare step and its
output must be byte-identical on every machine.
"""

from leanhpo.data.errors import DataError
from leanhpo.data.prepare import load_split, prepare_dataset, read_data_report
from leanhpo.data.redsm5 import ANNOTATIONS_FILE, POSTS_FILE, load_redsm5
from leanhpo.data.sample import generate_sample
from leanhpo.data.sources import HUB_RETRY_WAITS, materialize_source
from leanhpo.data.splits import SPLIT_NAMES, split_posts
from leanhpo.data.symptoms import (
    LABEL_REPAIRS,
    NON_SYMPTOM_LABELS,
    SYMPTOM_DESCRIPTIONS,
    SYMPTOMS,
)

__all__ = [
    "ANNOTATIONS_FILE",
    "HUB_RETRY_WAITS",
    "LABEL_REPAIRS",
    "NON_SYMPTOM_LABELS",
    "POSTS_FILE",
    "SPLIT_NAMES",
    "SYMPTOMS",
    "SYMPTOM_DESCRIPTIONS",
    "DataError",
    "generate_sample",
    "load_redsm5",
    "load_split",
    "materialize_source",
    "prepare_dataset",
    "read_data_report",
    "split_posts",
]
