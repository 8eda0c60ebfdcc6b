"""Batch samplers that group examples of similar length, so padded batches waste little.

With dynamic padding a batch costs as much as its longest example times its size. SNLI pairs
average 26 tokens, but a random batch of 32 pads to 48 on average: nearly half the compute of
every forward and backward pass goes to padding. Grouping by length removes most of it.

* :class:`SortedBatchSampler` (inference): batches of consecutive examples in length order;
  :func:`restore_order` puts per-example outputs back in dataset order.
* :class:`LengthGroupedBatchSampler` (training): a seeded shuffle, then sorting inside
  "megabatches" of ``megabatch_factor`` batches and shuffling the resulting batches, so batches
  stay random in content and order but each holds examples of similar length (the scheme of
  Hugging Face's ``LengthGroupedSampler``, with the batch order shuffled as well).
* :class:`ShardedBatchSampler` (data-parallel runs): each rank's disjoint share of another
  sampler's global batches, so N ranks together take the same examples per step as one process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


class SortedBatchSampler(Sampler[list[int]]):
    """Deterministic batches in descending length order (for inference).

    Args:
        lengths: token count of every example.
        batch_size: examples per batch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int) -> None:
        self.order = np.argsort(-np.asarray(lengths), kind="stable")
        self.batch_size = int(batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.order), self.batch_size):
            yield self.order[start:start + self.batch_size].tolist()

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Random batches of similar-length examples, reshuffled every epoch (for training).

    Args:
        lengths: token count of every example.
        batch_size: examples per batch.
        generator: seeded generator; each epoch draws a new permutation from it.
        megabatch_factor: batches per sorted group (HF uses 50).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                 megabatch_factor: int = 50) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = int(batch_size)
        self.generator = generator
        self.megabatch = self.batch_size * int(megabatch_factor)

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(len(self.lengths), generator=self.generator).numpy()
        batches = []
        for start in range(0, len(perm), self.megabatch):
            chunk = perm[start:start + self.megabatch]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk),
                                                                     self.batch_size)]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[b].tolist()

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


class ShardedBatchSampler(Sampler[list[int]]):
    """One rank's share of every batch of another batch sampler (DDP).

    Every rank draws the same global batches (same sampler, same seed) and keeps the examples
    at positions ``rank, rank + world_size, ...`` of each: disjoint shards that together are
    the global batch, alike in length (length-grouped batches are sorted, so contiguous halves
    would give one rank all the long examples).

    Args:
        batches: the global batch sampler.
        num_examples: examples the global sampler covers.
        batch_size: its batch size (only its last batch may be smaller).
        rank: this rank.
        world_size: number of ranks.
        even: every rank yields the same number of batches (training steps in lockstep): a
            global batch with fewer examples than ranks is skipped on every rank. Without it
            (evaluation) every example is kept and a rank skips only its empty shards.
    """

    def __init__(self, batches: Sampler[list[int]], num_examples: int, batch_size: int,
                 rank: int, world_size: int, even: bool = True) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.batches = batches
        self.rank, self.world_size, self.even = int(rank), int(world_size), even
        self.last = int(num_examples) % int(batch_size)  # size of a smaller last batch, or 0
        self.batch_size = int(batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            if self.even and len(batch) < self.world_size:
                continue
            shard = list(batch[self.rank::self.world_size])
            if shard:
                yield shard

    def __len__(self) -> int:
        if self.even:
            skipped = 0 < self.last < self.world_size
        else:
            skipped = 0 < self.last <= self.rank
        return len(self.batches) - int(skipped)


def restore_order(batch_sampler: object, rows: np.ndarray) -> np.ndarray:
    """Puts per-example ``rows`` produced in ``batch_sampler``'s order back in dataset order.

    Returns ``rows`` unchanged for a loader that was not length-sorted.
    """
    if not isinstance(batch_sampler, SortedBatchSampler):
        return rows
    out = np.empty_like(rows)
    out[batch_sampler.order] = rows
    return out
