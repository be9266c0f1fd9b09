"""Evidence-only augmentation of training posts with TextAttack (SPEC 3, "Augmentation").

Only the located status-1 evidence sentences are rewritten; every byte outside them is kept,
and the evidence offsets of all nine symptoms are moved to the rewritten text. Which sentences
are rewritten, and how, comes from an RNG derived from (seed, epoch, post_id), so an epoch's
augmentation is reproducible and independent of the order of the posts. TextAttack is imported
lazily (see `load_textattack`): nothing pays for it unless prob > 0.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import heapq
import logging
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from leanhpo.commands import executable
from leanhpo.data.errors import DataError
from leanhpo.data.nltk_data import RESOURCES, default_dest

# Offline methods -> the recipe in `textattack.augmentation.recipes` behind each.
AUGMENTATION_METHODS: dict[str, str] = {
    "synonym": "WordNetAugmenter",  # swap a word for a WordNet synonym
    "insert": "SynonymInsertionAugmenter",  # insert a WordNet synonym of some word
    "swap": "SwapAugmenter",  # swap two words
    "delete": "DeletionAugmenter",  # delete a word
    "char_perturb": "CharSwapAugmenter",  # swap, substitute, delete or insert a character
}
# TextAttack methods that download models or data on first use, which this project cannot do.
DOWNLOAD_METHODS: dict[str, str] = {
    "back_translation": "MarianMT translation models (Helsinki-NLP/opus-mt-*) from the Hugging Face hub",
    "back_transcription": "text-to-speech and speech-recognition models from the Hugging Face hub",
    "embedding": "counter-fitted word embeddings from TextAttack's download server",
    "checklist": "a flair named-entity model from the Hugging Face hub",
    "clare": "the distilroberta-base model (Hugging Face hub) and the Universal Sentence Encoder (TF Hub)",
}
DEFAULT_METHODS: tuple[str, ...] = ("synonym", "swap", "delete")
MAX_PROB = 0.5
PROB_KEY = "train.augmentation_prob"
METHODS_KEY = "train.augmentation_methods"
METHOD_SEPARATOR = "+"  # "synonym+swap" names a method list as one scalar (Optuna categoricals)
MAX_EXAMPLES = 3
AUGMENTED_SPLIT = "train"
NUMPY_SEED_RANGE = 2**32
STATS_COUNTERS = (
    "posts_augmented",
    "sentences_selected",  # drawn for rewriting (below prob) and not skipped
    "sentences_rewritten",
    "sentences_unchanged",  # TextAttack gave nothing, an empty or the same sentence, or failed
    "sentences_skipped_overlap",  # drawn, but partly overlapping spans keep their text
)

LOG = logging.getLogger(__name__)
# (sentence, method, seed) -> the rewritten sentence, or None when nothing came out.
Rewriter = Callable[[str, str, int], "str | None"]
_AUGMENTERS: dict[str, Any] = {}


def normalise_methods(methods: str | Sequence[str]) -> list[str]:
    """A method list from a list of names or one "a+b" string."""
    if isinstance(methods, str):
        return [name for name in methods.split(METHOD_SEPARATOR) if name]
    return list(methods)


def augmentation_config_problems(
    prob: Any, methods: Any, *, methods_key: str = METHODS_KEY
) -> list[str]:
    """Problems with the two config values, each naming its key; empty when both are valid.

    `methods_key` names where the methods came from, e.g. a search-space choice."""
    problems = []
    if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0 <= prob <= MAX_PROB:
        problems.append(
            f"config key '{PROB_KEY}': {prob!r} is not a number from 0 to {MAX_PROB} "
            "(the chance that each evidence sentence of a training post is rewritten)"
        )
    if not isinstance(methods, str | list | tuple):
        return [*problems, f"config key '{methods_key}': expected a list of method names"]
    names = normalise_methods(methods)
    offline = ", ".join(AUGMENTATION_METHODS)
    for name in names:
        if name in DOWNLOAD_METHODS:
            problems.append(
                f"config key '{methods_key}': {name!r} needs a download "
                f"({DOWNLOAD_METHODS[name]}), which this project does not do; "
                f"use only offline methods: {offline}"
            )
        elif name not in AUGMENTATION_METHODS:
            problems.append(
                f"config key '{methods_key}': unknown method {name!r}; offline methods: {offline}"
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        problems.append(f"config key '{methods_key}': {duplicates} listed more than once")
    if not names and isinstance(prob, int | float) and prob > 0:
        problems.append(
            f"config key '{methods_key}': empty, but {PROB_KEY} is {prob}; name at least one "
            f"method ({offline}) or set {PROB_KEY} to 0"
        )
    return problems


def augment_split(
    name: str,
    posts: list[dict],
    prob: float,
    methods: str | Sequence[str],
    seed: int,
    epoch: int,
    *,
    rewrite: Rewriter | None = None,
) -> tuple[list[dict], dict[str, Any]]:
    """`augment_posts` for a named split; only the train split may be augmented."""
    if name != AUGMENTED_SPLIT:
        raise ValueError(
            f"refusing to augment the {name!r} split: only {AUGMENTED_SPLIT!r} is augmented, so "
            "that validation and test metrics are measured on the posts as annotated"
        )
    return augment_posts(posts, prob, methods, seed, epoch, rewrite=rewrite)


def augment_posts(
    posts: list[dict],
    prob: float,
    methods: str | Sequence[str],
    seed: int,
    epoch: int,
    *,
    rewrite: Rewriter | None = None,
) -> tuple[list[dict], dict[str, Any]]:
    """Return new posts with evidence sentences rewritten, and the epoch's augmentation stats.

    Each located evidence sentence (shared by any number of symptoms) is rewritten with
    probability `prob` by a method drawn from `methods`. `rewrite` replaces TextAttack (tests).
    The input posts are not modified.
    """
    problems = augmentation_config_problems(prob, methods)
    if problems:
        raise ValueError("; ".join(problems))
    names = normalise_methods(methods)
    stats: dict[str, Any] = {
        **dict.fromkeys(STATS_COUNTERS, 0),
        "by_method": dict.fromkeys(names, 0),
        "unchanged_by_method": dict.fromkeys(names, 0),
        "examples": [],
    }
    if prob == 0:
        return [copy.deepcopy(post) for post in posts], stats
    rewriter = rewrite or augment_sentence
    examples: list[tuple[str, int, dict[str, str]]] = []
    augmented = []
    for post in posts:
        new_post, rewritten = _augment_post(post, prob, names, seed, epoch, rewriter, stats)
        augmented.append(new_post)
        stats["posts_augmented"] += bool(rewritten)
        examples.extend((post["post_id"], start, record) for start, record in rewritten)
    # The smallest (post_id, offset) keys, so the examples too ignore the order of the posts.
    smallest = heapq.nsmallest(MAX_EXAMPLES, examples, key=lambda item: item[:2])
    stats["examples"] = [record for _, _, record in smallest]
    return augmented, stats


def _augment_post(
    post: dict,
    prob: float,
    methods: list[str],
    seed: int,
    epoch: int,
    rewrite: Rewriter,
    stats: dict[str, Any],
) -> tuple[dict, list[tuple[int, dict[str, str]]]]:
    text: str = post["text"]
    rng = _post_rng(seed, epoch, str(post["post_id"]))
    pieces: list[str] = []
    moved: dict[tuple[int, int], tuple[int, int]] = {}
    rewritten: list[tuple[int, dict[str, str]]] = []
    cursor = shift = 0
    for start, end, spans in _evidence_units(post):
        # Draws of fixed size (not randrange, which rejects and redraws) made for every
        # sentence, so prob does not change the method or seed a sentence gets, and the
        # methods list does not change which sentences are selected.
        selected = rng.random() < prob
        method = methods[min(int(rng.random() * len(methods)), len(methods) - 1)]
        call_seed = rng.getrandbits(32)
        original = new = text[start:end]
        if selected and len(spans) > 1:
            stats["sentences_skipped_overlap"] += 1
        elif selected and original.strip():
            stats["sentences_selected"] += 1
            produced = rewrite(original, method, call_seed)
            if produced and produced.strip() and produced != original:
                new = produced
                stats["sentences_rewritten"] += 1
                stats["by_method"][method] += 1
                record = {"post_id": post["post_id"], "method": method}
                rewritten.append((start, {**record, "original": original, "augmented": new}))
            else:
                stats["sentences_unchanged"] += 1
                stats["unchanged_by_method"][method] += 1
        pieces += [text[cursor:start], new]
        cursor = end
        if new is original:
            moved.update({span: (span[0] + shift, span[1] + shift) for span in spans})
        else:
            moved[(start, end)] = (start + shift, start + shift + len(new))
        shift += len(new) - len(original)
    pieces.append(text[cursor:])
    new_post = copy.deepcopy(post)
    new_post["text"] = "".join(pieces)
    new_post["evidence"] = [
        [list(moved[(span[0], span[1])]) for span in spans] for spans in post["evidence"]
    ]
    return new_post, rewritten


def _evidence_units(post: dict) -> Iterator[tuple[int, int, list[tuple[int, int]]]]:
    """Distinct evidence spans of all symptoms, with partly overlapping ones grouped together."""
    length = len(post["text"])
    spans = sorted({(int(span[0]), int(span[1])) for spans in post["evidence"] for span in spans})
    for start, end in spans:
        if not 0 <= start <= end <= length:
            raise DataError(
                f"Post {post['post_id']!r} has the evidence span [{start}, {end}] outside its "
                f"text ({length} characters). Fix: prepare the data again with leanhpo's loader."
            )
    group: list[tuple[int, int]] = []
    group_end = 0
    for span in spans:
        if group and span[0] >= group_end:
            yield group[0][0], group_end, group
            group = []
        group.append(span)
        group_end = max(group_end, span[1]) if len(group) > 1 else span[1]
    if group:
        yield group[0][0], group_end, group


def _post_rng(seed: int, epoch: int, post_id: str) -> random.Random:
    # sha256, not hash(): hash() of a str changes with every process (PYTHONHASHSEED).
    digest = hashlib.sha256(f"{seed}\x00{epoch}\x00{post_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def augment_sentence(sentence: str, method: str, seed: int) -> str | None:
    """One TextAttack augmentation of `sentence`, or None when it produced nothing."""
    augmenter = _augmenter(method)
    try:
        with _seeded_global_rngs(seed):
            results = augmenter.augment(sentence)
    except Exception as error:  # one odd post must not end a trial: kept, counted as unchanged
        LOG.warning("TextAttack %s failed on %r: %s; sentence kept", method, sentence[:80], error)
        return None
    return results[0] if results else None


@contextlib.contextmanager
def _seeded_global_rngs(seed: int) -> Iterator[None]:
    """TextAttack draws from the global `random` and numpy RNGs: seed them for one call and
    restore them after, so the trainer's own random stream is not disturbed."""
    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % NUMPY_SEED_RANGE)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _augmenter(method: str) -> Any:
    if method not in _AUGMENTERS:
        if method not in AUGMENTATION_METHODS:
            raise ValueError(f"unknown augmentation method {method!r}")
        textattack = load_textattack()
        import nltk

        recipe = getattr(textattack.augmentation.recipes, AUGMENTATION_METHODS[method])
        with _offline_nltk_downloads(nltk):  # WordNetAugmenter() calls nltk.download("omw-1.4")
            augmenter = recipe(transformations_per_example=1)
        if method == "insert":
            augmenter.transformation = _sorted_synonym_insertion(textattack)
        augmenter.transformation = _CandidatesInTextOrder(augmenter.transformation)
        _AUGMENTERS[method] = augmenter
    return _AUGMENTERS[method]


class _CandidatesInTextOrder:
    """Hands the augmenter's `random.choice` the candidates in text order: several
    transformations build them from a `set` of strings, whose order follows the per-process
    string hash, so the same seed would otherwise pick differently in another process."""

    def __init__(self, transformation: Any) -> None:
        self.transformation = transformation

    def __call__(self, current_text: Any, *args: Any, **kwargs: Any) -> list[Any]:
        candidates = self.transformation(current_text, *args, **kwargs)
        return sorted(candidates, key=_candidate_key)


def _candidate_key(candidate: Any) -> tuple[str, tuple[int, ...]]:
    return candidate.text, tuple(sorted(candidate.attack_attrs.get("modified_indices", ())))


def _sorted_synonym_insertion(textattack: Any) -> Any:
    """SynonymInsertionAugmenter's transformation, with its synonym set in sorted order (it
    draws one with `random.choice` from a list made of a set; see `_CandidatesInTextOrder`)."""
    base = textattack.transformations.word_insertions.WordInsertionRandomSynonym

    class SortedSynonymInsertion(base):  # type: ignore[misc, valid-type]
        def _get_synonyms(self, word: str) -> list[str]:
            return sorted(super()._get_synonyms(word))

    return SortedSynonymInsertion()


def load_textattack() -> Any:
    """Import TextAttack offline, once; fail with a fix if the NLTK corpora are missing.

    On import TextAttack calls `nltk.download` for six packages (once per machine) and
    configures logging with `disable_existing_loggers`, which would silence every logger
    created before it. Downloads are skipped and logger states restored around the import.
    """
    if "textattack" in sys.modules:
        return sys.modules["textattack"]
    import nltk

    check_nltk_corpora()
    loggers = logging.root.manager.loggerDict
    disabled = {
        name: log.disabled for name, log in loggers.items() if isinstance(log, logging.Logger)
    }
    try:
        with _offline_nltk_downloads(nltk):
            import textattack
    finally:
        for name, was_disabled in disabled.items():
            logger = loggers.get(name)
            if isinstance(logger, logging.Logger):
                logger.disabled = was_disabled
    return textattack


def check_nltk_corpora() -> None:
    """Raise DataError, with the fix, unless NLTK finds WordNet and stopwords."""
    import nltk

    fallback = str(default_dest())
    if fallback not in nltk.data.path:
        nltk.data.path.append(fallback)  # NLTK_DATA, when set, stays first
    missing = [name for name, path in RESOURCES.items() if not _nltk_has(nltk, path)]
    if missing:
        raise DataError(
            f"TextAttack augmentation needs the NLTK corpora {', '.join(missing)}, which are not "
            f"in any NLTK data folder ({', '.join(nltk.data.path)}). Fix: run `make nltk-data` "
            f"(or `{executable('python')} -m leanhpo.data.nltk_data --dest DIR`) and set "
            "NLTK_DATA=DIR."
        )


def _nltk_has(nltk: Any, path: str) -> bool:
    with contextlib.suppress(LookupError):
        return bool(nltk.data.find(path))
    return False


@contextlib.contextmanager
def _offline_nltk_downloads(nltk: Any) -> Iterator[None]:
    """Make `nltk.download` a no-op: the corpora come from leanhpo.data.nltk_data, and the
    download host may be unreachable (or slow to time out) where trials run."""
    original = nltk.download
    nltk.download = lambda *args, **kwargs: True
    try:
        yield
    finally:
        nltk.download = original
