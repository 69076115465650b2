"""A deterministic synthetic corpus and a sampler whose position survives resizes.

Nothing is downloaded: the corpus is generated from a seed, so every process and
every restart sees the same tokens. The text follows a sparse random Markov chain,
which a small language model learns quickly, so a falling loss is visible in tens
of steps on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CorpusSpec:
    vocab_size: int = 64
    seq_len: int = 64
    num_sequences: int = 4096
    successors: int = 3  # each token is followed by one of this many tokens
    seed: int = 1234


class SyntheticCorpus:
    """`num_sequences` token sequences of `seq_len + 1` tokens (inputs and shifted targets)."""

    def __init__(self, spec: CorpusSpec = CorpusSpec()) -> None:
        self.spec = spec
        gen = torch.Generator().manual_seed(spec.seed)
        table = torch.randint(spec.vocab_size, (spec.vocab_size, spec.successors), generator=gen)
        tokens = torch.empty(spec.num_sequences, spec.seq_len + 1, dtype=torch.long)
        tokens[:, 0] = torch.randint(spec.vocab_size, (spec.num_sequences,), generator=gen)
        choice = torch.randint(spec.successors, (spec.num_sequences, spec.seq_len), generator=gen)
        for t in range(spec.seq_len):
            tokens[:, t + 1] = table[tokens[:, t], choice[:, t]]
        self.tokens = tokens

    def __len__(self) -> int:
        return self.spec.num_sequences

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.tokens[indices]
        return rows[:, :-1], rows[:, 1:]


class GlobalBatchSampler:
    """Maps (optimizer step, micro step, rank) to sample indices.

    Step `s` consumes global samples [s * G, (s + 1) * G). Within it, micro step `m`
    of rank `r` takes the slice starting at (m * world + r) * micro. Any world size
    that divides G evenly reads exactly the same samples per step, so a run resumed
    on a new world size continues the same data stream. Each pass over the corpus is
    shuffled with a seed derived from the pass number.
    """

    def __init__(self, corpus_size: int, seed: int = 0) -> None:
        self.corpus_size = corpus_size
        self.seed = seed
        self._epoch = -1
        self._order = torch.arange(corpus_size)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(self.corpus_size, generator=gen)
            self._epoch = epoch
        return self._order

    def indices(
        self,
        step: int,
        micro_step: int,
        rank: int,
        world_size: int,
        micro_batch: int,
        global_batch: int,
    ) -> torch.Tensor:
        start = step * global_batch + (micro_step * world_size + rank) * micro_batch
        positions = torch.arange(start, start + micro_batch)
        out = torch.empty(micro_batch, dtype=torch.long)
        epochs = positions // self.corpus_size
        for epoch in epochs.unique().tolist():
            mask = epochs == epoch
            out[mask] = self._permutation(int(epoch))[positions[mask] % self.corpus_size]
        return out
