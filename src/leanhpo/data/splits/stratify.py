"""Multi-label iterative stratification over groups of posts (Sechidis, Tsoumakas and Vlahavas,
2011, "On the stratification of multi-label data"), with a floor for the rare symptoms.

Written here rather than taken from the `iterative-stratification` package: that package splits
single examples, and a split by author must place whole groups of different sizes (an author of
one post beside one of 68). The algorithm is the paper's, with groups for examples: take the
symptom with the fewest positive groups still unplaced, put each of its groups (largest first)
in the split that still wants the most of that symptom's positive posts (ties: the split that
wants the most posts, then a seeded draw), and place the groups without a symptom by posts
wanted. What a split wants is its ratio of each count, except that validation and test each
want at least `min_positives` positive posts of every symptom (a rarer symptom: as many as leave
train one), since 2.2 expected PSYCHOMOTOR positives in a 40-post test split leave that
symptom's F1 to luck. Two passes follow the greedy one: one moves groups to reach those floors
where the greedy pass missed them, one brings the held-out sizes back towards their ratio with
moves that cost no symptom its balance.
"""

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TRAIN = "train"


@dataclass(frozen=True)
class Group:
    """One unit of the split: its key (smallest post id), posts, and positive posts per label."""

    key: str
    size: int
    positives: tuple[int, ...]


def stratify(
    groups: list[Group], fractions: dict[str, float], min_positives: int, rng: random.Random
) -> dict[str, str]:
    """Group key -> split name."""
    names = list(fractions)
    n_labels = len(groups[0].positives) if groups else 0
    totals = [sum(group.positives[label] for group in groups) for label in range(n_labels)]
    posts_wanted = {name: fractions[name] * sum(g.size for g in groups) for name in names}
    wanted = [_label_wants(totals[label], fractions, min_positives) for label in range(n_labels)]
    order = list(groups)
    rng.shuffle(order)  # the seeded tie-break among groups of one size
    order.sort(key=lambda group: -group.size)
    unplaced = {group.key: group for group in order}
    assignment: dict[str, str] = {}

    def place(group: Group, name: str) -> None:
        assignment[group.key] = name
        del unplaced[group.key]
        posts_wanted[name] -= group.size
        for label, count in enumerate(group.positives):
            wanted[label][name] -= count

    while True:
        open_labels = _positive_groups_left(unplaced.values(), n_labels)
        if not open_labels:
            break
        label = min(open_labels, key=lambda lab: (open_labels[lab], totals[lab], lab))
        for group in [g for g in unplaced.values() if g.positives[label]]:
            scores = {n: (wanted[label][n], posts_wanted[n]) for n in names}
            place(group, _best(scores, rng))
    for group in list(unplaced.values()):
        place(group, _best({n: (posts_wanted[n],) for n in names}, rng))
    _raise_to_floors(assignment, groups, totals, min_positives)
    targets = {name: fractions[name] * sum(g.size for g in groups) for name in names}
    label_targets = [_label_wants(total, fractions, min_positives) for total in totals]
    floors = [label_floor(total, min_positives) for total in totals]
    _balance_sizes(assignment, groups, targets, label_targets, floors)
    return assignment


def label_floor(total: int, min_positives: int) -> int:
    """Positives that validation and test each aim for at least: min_positives, or for a rarer
    symptom as many as leave train at least one (3 positive posts: one in each split)."""
    return max(0, min(min_positives, (total - 1) // 2))


def _label_wants(total: int, fractions: dict[str, float], min_positives: int) -> dict[str, float]:
    wants = {name: share * total for name, share in fractions.items()}
    floor = label_floor(total, min_positives)
    for name in wants:
        if name != TRAIN:
            wants[name] = max(wants[name], float(floor))
    if TRAIN in wants:
        wants[TRAIN] = total - sum(value for name, value in wants.items() if name != TRAIN)
    return wants


def _raise_to_floors(
    assignment: dict[str, str], groups: list[Group], totals: list[int], min_positives: int
) -> None:
    """Where the greedy pass left validation or test short of a symptom's floor (a group placed
    early for another symptom takes its positives along), move the smallest train group with
    that symptom there, and send back to train the group of the nearest size that holds no
    positive the short split needs. Every move lowers the total shortfall, so this ends."""
    floors = [label_floor(total, min_positives) for total in totals]
    by_key = {group.key: group for group in groups}
    for label, floor in enumerate(floors):
        for name in sorted({*assignment.values()} - {TRAIN}):
            while _count(assignment, by_key, name, label) < floor:
                donors = [g for g in groups if assignment[g.key] == TRAIN and g.positives[label]]
                if not donors:
                    break  # every remaining positive group is in the other held-out split
                moved = min(donors, key=lambda g: (g.size, g.key))
                assignment[moved.key] = name
                counts = [_count(assignment, by_key, name, lab) for lab in range(len(totals))]
                back = [
                    g
                    for g in groups
                    if assignment[g.key] == name
                    and g.key != moved.key
                    and all(
                        counts[lab] - g.positives[lab] >= floors[lab] or not g.positives[lab]
                        for lab in range(len(totals))
                    )
                ]
                if back:
                    returned = min(back, key=lambda g: (abs(g.size - moved.size), g.key))
                    assignment[returned.key] = TRAIN


def _balance_sizes(
    assignment: dict[str, str],
    groups: list[Group],
    targets: dict[str, float],
    label_targets: list[dict[str, float]],
    floors: list[int],
) -> None:
    """Bring validation and test closer to their ratio of the posts: the symptom targets (and
    floors) pull in groups beyond it. A move between a held-out split and train is taken only
    when it brings that split's size closer to its target and no symptom's count further from
    its target (a group without positives, say), and no symptom below its floor; the largest
    such gain first, until none is left. Every move shrinks a size gap, so this ends."""
    sizes = {name: 0 for name in targets}
    counts = {name: [0] * len(label_targets) for name in targets}
    for group in groups:
        name = assignment[group.key]
        sizes[name] += group.size
        for label, value in enumerate(group.positives):
            counts[name][label] += value
    while True:
        best: tuple[float, float, str] | None = None
        move: tuple[Group, str, str] | None = None
        for group in groups:
            source = assignment[group.key]
            for held_out in (n for n in targets if n != TRAIN):
                if source not in (held_out, TRAIN) or source == held_out == TRAIN:
                    continue
                sign = -1 if source == held_out else 1  # the held-out split loses or gains it
                gap = abs(sizes[held_out] - targets[held_out])
                gain = gap - abs(sizes[held_out] + sign * group.size - targets[held_out])
                label_cost = sum(
                    abs(counts[held_out][lab] + sign * value - label_targets[lab][held_out])
                    - abs(counts[held_out][lab] - label_targets[lab][held_out])
                    for lab, value in enumerate(group.positives)
                    if value
                )
                below_floor = sign < 0 and any(
                    value and counts[held_out][lab] - value < floors[lab]
                    for lab, value in enumerate(group.positives)
                )
                if gain <= 0 or label_cost > 0 or below_floor:
                    continue
                key = (-gain, label_cost, group.key)
                if best is None or key < best:
                    best, move = key, (group, source, TRAIN if source == held_out else held_out)
        if move is None:
            return
        group, source, target = move
        assignment[group.key] = target
        sizes[source] -= group.size
        sizes[target] += group.size
        for label, value in enumerate(group.positives):
            counts[source][label] -= value
            counts[target][label] += value


def _count(assignment: dict[str, str], by_key: dict[str, Group], name: str, label: int) -> int:
    return sum(g.positives[label] for key, g in by_key.items() if assignment[key] == name)


def _positive_groups_left(groups: Iterable[Group], n_labels: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    for group in groups:
        for label in range(n_labels):
            if group.positives[label]:
                counts[label] = counts.get(label, 0) + 1
    return counts


def _best(scores: Mapping[str, tuple[float, ...]], rng: random.Random) -> str:
    top = max(scores.values())
    tied = [name for name, score in scores.items() if score == top]
    return tied[0] if len(tied) == 1 else rng.choice(tied)
