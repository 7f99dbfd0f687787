"""One packer for forward passes: items of different lengths cut into batches of similar length.

Profiling (token sequences) and scoring (request rows) both sort by length, longest first, and cut
the sorted list into consecutive batches padded to their first item's length. Each caller says when
a batch would carry too much padding; the cutting itself is written once, here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def pack_by_length(lengths: Sequence[int], budget: int, too_padded: Callable[[int, int], bool]) -> list[list[int]]:
    """Indices of ``lengths`` in batches: sorted by length descending (ties keep their order), and
    a batch grows while its padded size (items × first item's length) stays within ``budget`` and
    ``too_padded(padded, real)`` (real = the batch's real tokens with the new item) is false. An
    item longer than ``budget`` gets a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        if current:
            padded = lengths[current[0]] * (len(current) + 1)
            if padded > budget or too_padded(padded, real + lengths[i]):
                batches.append(current)
                current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        batches.append(current)
    return batches
