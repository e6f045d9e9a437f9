"""Training batches with a resumable position: epoch after epoch, in an order fixed by the seed.

Folder (map-style) datasets: each epoch is a permutation drawn from (seed, epoch); Accelerate's prepared
DataLoader gives every process its own batches of it; each sample's own randomness (crop, caption line) is
drawn from (seed, epoch, index). So a position (epoch, batch index) pins down everything that comes next, and
a resumed run skips to it and sees the same batches an uninterrupted run would.

Shard (iterable) datasets split themselves across ranks (`WebTextImageDataset` reads rank and world size), so
their DataLoader is deliberately *not* prepared by Accelerate, which would shard them a second time. Each rank
resumes its own position by re-reading its shards up to it.
"""
from __future__ import annotations

import copy
import logging
import itertools
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch
from accelerate.utils import gather_object
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ..data import TextImageDataset, WebTextImageDataset
from ..data.common import generator, mix_seed
from ..tokenizers import Tokenizer
from ..utils import main_process_log
from .config import TrainConfig

__all__ = ["Batch", "EpochShuffle", "SeededSamples", "BatchStream", "build_dataset", "skip_counts", "runs_commands",
           "PIPE_PREFIX"]


class Batch(NamedTuple):
    """One micro-batch: caption ids (B, text_len), images (B, C, H, W) in [0, 1], dataset indices (B,) or None."""

    text: Tensor
    images: Tensor
    ids: Optional[Tensor]


PIPE_PREFIX = "pipe:"  # a shard source that runs a shell command


def split_outside_braces(text: str) -> List[str]:
    """`text` split at the commas that are not inside a brace list: "a.tar,s-{x,y}.tar" -> a.tar, s-{x,y}.tar."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def runs_commands(shards: Optional[str]) -> bool:
    """Whether a --shards value names a `pipe:` source anywhere (such a source runs a shell command)."""
    return shards is not None and PIPE_PREFIX in shards


def build_dataset(config: TrainConfig, *, text_len: int, image_size: int, tokenizer: Optional[Tokenizer],
                  transparent: bool, truncate_captions: bool, rank: int, world_size: int,
                  require_captions: bool = True, allow_pipe: bool = False) -> Dataset:
    """The dataset `config.folder` or `config.shards` names (exactly one of them).

    `pipe:` shard sources run shell commands: they are refused unless `allow_pipe` says the shards value came
    from the current invocation (the command line or the Python call), never from a saved run config.
    """
    if (config.folder is None) == (config.shards is None):
        raise ValueError("give exactly one data source: a folder (--folder) or tar shards (--shards), "
                         f"got folder={config.folder!r}, shards={config.shards!r}")
    common = dict(text_len=text_len, image_size=image_size, truncate_captions=truncate_captions,
                  resize_ratio=config.resize_ratio, transparent=transparent, tokenizer=tokenizer,
                  require_captions=require_captions)
    if config.folder is not None:
        return TextImageDataset(config.folder, **common, seed=config.seed)
    if runs_commands(config.shards) and not allow_pipe:
        raise ValueError(f"shards {config.shards!r} run a command ({PIPE_PREFIX}...), which is only allowed when "
                         "given on the current command line: pass --shards again")
    urls = [u.strip() for u in split_outside_braces(config.shards) if u.strip()]
    return WebTextImageDataset(urls, **common, shuffle_buffer=config.shuffle_buffer, seed=config.seed, rank=rank,
                               world_size=world_size, allow_pipe=allow_pipe)


def skip_counts(dataset: Dataset) -> Dict[str, int]:
    """How many items the dataset skipped so far in this process, by reason."""
    skipped = getattr(dataset, "skipped", None) or {}
    return {reason: len(items) for reason, items in sorted(skipped.items()) if items}


class EpochShuffle(Sampler):
    """A permutation of range(size) that depends only on (seed, epoch): the same on every process."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the permutation."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.size, generator=generator(mix_seed(self.seed, "order", self.epoch))).tolist())

    def __len__(self) -> int:
        return self.size


class SeededSamples(Dataset):
    """(index, text, image) = (index, *dataset[index]), its randomness drawn from (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Samples of another epoch get other crops and caption lines."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[int, Tensor, Tensor]:
        seed = mix_seed(self.seed, "sample", self.epoch, index)
        if isinstance(self.dataset, TextImageDataset):
            self.dataset.reseed(seed)
        with torch.random.fork_rng(devices=[]):  # datasets that draw from torch's global (CPU) RNG
            # the CPU generator alone: torch.manual_seed would also seed every accelerator's, per sample
            torch.random.default_generator.manual_seed(seed)
            text, image = self.dataset[index]
        return index, text, image


class BatchStream:
    """Endless `(epoch, batch_index, Batch)` on this process, with `state()` to save and `load_state()` to resume."""

    def __init__(self, dataset: Dataset, *, accelerator: Any, batch_size: int, num_workers: int, seed: int):
        self.accelerator, self.batch_size, self.num_workers, self.seed = accelerator, batch_size, num_workers, seed
        self.dataset = dataset
        self.sized = not isinstance(dataset, IterableDataset)
        self.epoch, self.batch = 0, 0  # the next batch to read
        if self.sized:
            self.samples = SeededSamples(dataset, seed)
            self.sampler = EpochShuffle(len(dataset), seed)
            # prepared by the trainer together with the model (DeepSpeed reads the batch size from it)
            self.loader = DataLoader(self.samples, batch_size=batch_size, sampler=self.sampler, drop_last=True,
                                     num_workers=num_workers, generator=generator(seed))

    def state(self) -> Dict[str, Any]:
        """Where to resume: the epoch and the index of its next batch (for shards, one of each per process)."""
        acc = self.accelerator
        if self.sized:  # every process is at the same place in the shared order
            return {"epoch": self.epoch, "batch": self.batch, "world_size": acc.num_processes}
        per_rank = gather_object([(self.epoch, self.batch)])  # a collective: every process calls it
        return {"epoch": [e for e, _ in per_rank], "batch": [b for _, b in per_rank], "world_size": acc.num_processes}

    def load_state(self, state: Dict[str, Any]) -> None:
        """Continue from `state()` as saved (adapting, with a warning, to another number of processes)."""
        acc, world = self.accelerator, self.accelerator.num_processes
        epoch, batch, saved_world = state.get("epoch", 0), state.get("batch", 0), state.get("world_size", world)
        if isinstance(epoch, list):  # shards: one position per process
            if saved_world == world:
                epoch, batch = epoch[acc.process_index], batch[acc.process_index]
            else:
                main_process_log(acc, f"the checkpoint was written by {saved_world} processes, this run has "
                                      f"{world}: each process restarts epoch {min(epoch)} of its shards",
                                 logging.WARNING)
                epoch, batch = min(epoch), 0
        elif saved_world != world:
            batch = batch * saved_world // world  # as many samples consumed as before, in another order
            main_process_log(acc, f"resuming with {world} processes instead of {saved_world}: the data order "
                                  "differs from an uninterrupted run", logging.WARNING)
        self.epoch, self.batch = int(epoch), int(batch)

    def __iter__(self) -> Iterator[Tuple[int, int, Batch]]:
        while True:
            start = self.batch
            for index, raw in enumerate(self._epoch(self.epoch, start), start):
                self.batch = index + 1
                yield self.epoch, index, self._to_batch(raw)
            if self.batch == 0:
                processes = self.accelerator.num_processes
                raise ValueError(f"an epoch gave no batch: need at least batch_size x processes = "
                                 f"{self.batch_size} x {processes} usable samples per epoch (incomplete batches "
                                 "are dropped)")
            self.epoch, self.batch = self.epoch + 1, 0

    def _epoch(self, epoch: int, skip: int) -> Iterator[Any]:
        if self.sized:
            self.sampler.set_epoch(epoch)
            self.samples.set_epoch(epoch)
            loader = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
            if hasattr(loader, "set_epoch"):  # Accelerate passes its own epoch counter down to the sampler
                loader.set_epoch(epoch)
            return iter(loader)
        # a shallow copy per epoch starts from the same per-process state every time (skip records stay shared),
        # so the epoch's randomness follows (seed, epoch, rank) whether the process is fresh or not
        source = copy.copy(self.dataset)
        if hasattr(source, "set_epoch"):
            source.set_epoch(epoch)
        # worker seeds (and so the workers' crops and shuffle buffers) follow (seed, epoch, rank) too
        seed = mix_seed(self.seed, "workers", epoch, self.accelerator.process_index)
        loader = DataLoader(source, batch_size=self.batch_size, drop_last=True, num_workers=self.num_workers,
                            generator=generator(seed))
        return itertools.islice(iter(loader), skip, None)

    def _to_batch(self, raw: Any) -> Batch:
        device = self.accelerator.device
        if self.sized:
            ids, text, images = raw
            return Batch(text.to(device), images.to(device), ids.to(device))
        text, images = raw
        return Batch(text.to(device), images.to(device), None)

    def first_items(self, count: int) -> Batch:
        """The first `count` samples of the dataset, always the same ones (for sample grids)."""
        if self.sized:
            items = [SeededSamples(self.dataset, self.seed)[i] for i in range(min(count, len(self.dataset)))]
            ids, texts, images = zip(*items)
            return Batch(torch.stack(texts), torch.stack(images), torch.tensor(ids))
        source = copy.copy(self.dataset)  # reading it must not advance the original's per-process state
        items = list(itertools.islice(iter(source), count))
        if not items:
            raise ValueError("the dataset yielded no usable sample")
        texts, images = zip(*items)
        return Batch(torch.stack(texts), torch.stack(images), None)
