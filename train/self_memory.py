"""PMA-Net's memory during training: key/value banks per decoder layer, refreshed prototypes.

Every step the decoder records the projected keys/values of its self-attention; the non-padding
rows (at most `bank_cap / bank_iterations` per step, drawn uniformly) enter a per-layer bank
covering the last `memory.bank_iterations` steps. After `memory.warmup_iterations` steps and
then every `memory.refresh_stride` steps, M_K is rebuilt by FAISS K-Means on the key bank and
M_V as the mean of the values of the `memory.knn` nearest keys of each centroid — the same
library code as `python -m cluster activations`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from shared.config import Config
from shared.models.caption_decoder import CaptionDecoder
from shared.models.memory_attention import MemoryBank
from shared.prototypes import memory_prototypes, use_gpu_for


class SelfMemory:
    """Banks of every decoder layer plus the refresh schedule."""

    def __init__(self, decoder: CaptionDecoder, config: Config) -> None:
        self.decoder, self.config = decoder, config.memory
        self.cluster = config.cluster
        n_layers = len(decoder.memory_prototypes())
        seed = config.train.seed
        self.banks = [MemoryBank(self.config.bank_cap, self.config.bank_iterations, seed + i,
                                 device="cpu") for i in range(n_layers)]
        self.rows_per_step = max(1, math.ceil(self.config.bank_cap / self.config.bank_iterations))
        self.generator = torch.Generator().manual_seed(seed)
        decoder.record_keys_values(True)

    def collect(self) -> None:
        """Add the keys/values recorded by the last forward to the banks."""
        for bank, (keys, values, mask) in zip(self.banks, self.decoder.recorded_keys_values()):
            keys, values = keys[mask].float().cpu(), values[mask].float().cpu()
            if keys.shape[0] > self.rows_per_step:
                keep = torch.randperm(keys.shape[0], generator=self.generator)[:self.rows_per_step]
                keys, values = keys[keep], values[keep]
            bank.add(keys, values)

    def due(self, step: int) -> bool:
        """Whether prototypes are rebuilt after `step` (1-based count of finished steps)."""
        warm = self.config.warmup_iterations
        return step >= warm and (step - warm) % self.config.refresh_stride == 0

    def refresh(self) -> dict[str, float]:
        """Rebuild M_K / M_V of every layer from its bank; returns summary numbers."""
        per_layer, inertia, seconds = [], 0.0, 0.0
        device = self.decoder.head.weight.device
        for bank in self.banks:
            keys, values = bank.snapshot()
            m = min(self.config.n_prototypes, keys.shape[0])
            mk, mv, stats = memory_prototypes(keys.numpy(), values.numpy(), m,
                                              min(self.config.knn, keys.shape[0]),
                                              self.cluster.n_iter, self.cluster.seed,
                                              use_gpu_for(self.cluster.device))
            per_layer.append((torch.from_numpy(mk).to(device), torch.from_numpy(mv).to(device)))
            inertia += float(stats.inertia)
            seconds += float(stats.seconds)
        self.decoder.set_memory_prototypes(per_layer)
        return {"prototypes": per_layer[0][0].shape[0], "inertia": inertia, "seconds": seconds}

    def state(self) -> dict:
        return {"banks": [bank.state() for bank in self.banks],
                "generator": self.generator.get_state()}

    def load_state(self, state: dict) -> None:
        for bank, bank_state in zip(self.banks, state["banks"]):
            bank.load_state(bank_state)
        self.generator.set_state(state["generator"])

    def dump(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Current bank contents per layer (for `runs/<dataset>/memory/banks.npz`)."""
        snaps = [bank.snapshot() for bank in self.banks]
        return [k.numpy() for k, _ in snaps], [v.numpy() for _, v in snaps]
