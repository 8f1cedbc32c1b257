"""PMA-Net's memory during training: key/value banks per decoder layer, refreshed prototypes.

Every step the decoder records the projected keys/values of its self-attention; the non-padding
rows (at most `bank_cap / bank_iterations / world` per step and rank, drawn uniformly) enter a
per-layer bank covering the last `memory.bank_iterations` steps. After
`memory.warmup_iterations` steps and then every `memory.refresh_stride` steps, M_K is rebuilt
by FAISS K-Means on the key bank (trained on at most `memory.kmeans_max_points` sampled keys)
and M_V as the mean of the values of the `memory.knn` nearest keys (of the whole bank) of each
centroid — the same library code as `python -m cluster activations`. FAISS runs on the
training device's own GPU when it has a GPU build and `cluster.device` allows it.

- How many prototypes: `shared.prototypes.prototype_count`, the rule `cluster activations`
  follows too: min(memory.n_prototypes, keys in the layer's bank), with a warning line when the
  bank is smaller. Every refresh is logged (one line: step, prototypes installed per layer,
  bank size per layer, knn, seconds; kept in `refresh_log` and handed to `on_refresh`, which
  the trainers point at `RunLog.refresh` for TensorBoard); `warnings()` states what the
  trainer's manifest should carry, e.g. a run that ended before `memory.warmup_iterations`
  and so trained (and would be evaluated) with 0 prototypes.

- Banks hold float16 rows (halves the memory; a resumed run continues from exactly the rows
  an uninterrupted run holds, since both only ever see the float16 values).
- Several ranks (DDP): every step the ranks' sampled rows are all-gathered and rank 0 alone
  keeps the bank, so its prototypes (broadcast to every rank by the trainer) are built from
  all ranks' data, and its checkpoint holds the whole bank.
- Checkpoints: the banks go to their own file beside `last.pt` (`save_banks`), not into it;
  `last.pt` names that file and carries a matching token (`load_banks`).
"""

from __future__ import annotations

import math
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from shared.checkpoint_files import (UnreadableCheckpoint, load_checkpoint, previous_path,
                                     read_entry)
from shared.config import Config
from shared.models.caption_decoder import CaptionDecoder
from shared.models.memory_attention import MemoryBank
from shared.prototypes import PrototypeCount, memory_prototypes, prototype_count, use_gpu_for
from shared.training_schedule import save_atomic

BANKS_FORMAT = 1
_HALF_MAX = 65504.0  # largest finite float16


def _world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def to_bank_dtype(rows: torch.Tensor) -> torch.Tensor:
    """Rows as banks store them: float16 (clamped to its finite range)."""
    return rows.float().clamp(-_HALF_MAX, _HALF_MAX).to(torch.float16)


def banks_file(checkpoint: Path, token: str) -> Path:
    """`<dir>/<stem>.banks.<token>.pt` beside `checkpoint` (e.g. `last.banks.3f2a....pt`)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.banks.{token}.pt")


def layer_counts(bank_sizes: list[int], config: Config) -> list[PrototypeCount]:
    """Prototypes and k-NN neighbours each layer's bank gives (`prototype_count`, the rule
    `cluster activations` follows too)."""
    mem = config.memory
    return [prototype_count(n, mem.n_prototypes, mem.knn, f"memory refresh: layer {layer} bank")
            for layer, n in enumerate(bank_sizes)]


def kmeans_seed(config: Config) -> int:
    """The refresh K-Means seed: `cluster.seed` offset by `train.seed`, so decoders trained with
    different seeds also differ in their memory's initialisation and sampling (seed 0: the
    plain `cluster.seed`)."""
    return (config.cluster.seed + config.train.seed) % 2**31


def layer_prototypes(snapshots: list[tuple[torch.Tensor, torch.Tensor]], config: Config,
                     gpu_device: int | None = None
                     ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list]:
    """M_K / M_V (float32 numpy) and `PrototypeStats` of each layer's bank snapshot, with the
    settings of `[memory]` / `[cluster]` (what one refresh computes; also `bench/refresh.py`)."""
    mem, clu = config.memory, config.cluster
    per_layer, stats = [], []
    counts = layer_counts([keys.shape[0] for keys, _ in snapshots], config)
    for (keys, values), count in zip(snapshots, counts):
        m = count.prototypes
        sample = mem.kmeans_max_points if mem.kmeans_max_points >= m else None
        mk, mv, layer_stats = memory_prototypes(
            keys.float().numpy(), values.float().numpy(), m, count.knn, clu.n_iter,
            kmeans_seed(config), use_gpu_for(clu.device), max_points=sample,
            gpu_device=gpu_device)
        per_layer.append((mk, mv))
        stats.append(layer_stats)
    return per_layer, stats


def _log_to_stderr(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


class SelfMemory:
    """Banks of every decoder layer plus the refresh schedule.

    `log` receives one line per refresh (default: stderr, above any progress bar),
    `on_refresh` each refresh's record (as kept in `refresh_log`)."""

    def __init__(self, decoder: CaptionDecoder, config: Config,
                 log: Callable[[str], None] | None = None,
                 on_refresh: Callable[[dict], None] | None = None) -> None:
        self.decoder, self.config = decoder, config.memory
        self.log = log or _log_to_stderr
        self.on_refresh = on_refresh
        self.refresh_log: list[dict] = []
        self.step: int | None = None   # the last step `due` was asked about
        self.full_config = config
        if self.config.kmeans_max_points < 0:
            raise ValueError(f"memory.kmeans_max_points must be >= 0 (0: every key), got "
                             f"{self.config.kmeans_max_points}")
        if 0 < self.config.kmeans_max_points < self.config.n_prototypes:
            raise ValueError(f"memory.kmeans_max_points={self.config.kmeans_max_points} is "
                             f"fewer than memory.n_prototypes={self.config.n_prototypes} "
                             f"(0: train K-Means on every key)")
        self.rank, self.world = _world()
        n_layers = len(decoder.memory_prototypes())
        seed = config.train.seed
        self.banks = [MemoryBank(self.config.bank_cap, self.config.bank_iterations, seed + i,
                                 device="cpu") for i in range(n_layers)]
        self.rows_per_step = max(1, math.ceil(
            self.config.bank_cap / self.config.bank_iterations / self.world))
        self.generator = torch.Generator().manual_seed(seed)
        decoder.record_keys_values(True)

    def collect(self) -> None:
        """Add the keys/values recorded by the last forward to the banks (of rank 0: every
        rank's sampled rows are gathered there)."""
        rows = []
        for keys, values, mask in self.decoder.recorded_keys_values():
            keys, values = keys[mask], values[mask]
            if keys.shape[0] > self.rows_per_step:
                keep = torch.randperm(keys.shape[0], generator=self.generator)[:self.rows_per_step]
                keep = keep.to(keys.device)
                keys, values = keys[keep], values[keep]
            rows.append((to_bank_dtype(keys), to_bank_dtype(values)))
        if self.world > 1:
            rows = self._gather(rows)
            if self.rank != 0:
                return
        for bank, (keys, values) in zip(self.banks, rows):
            bank.add(keys.cpu(), values.cpu())

    def _gather(self, rows: list[tuple[torch.Tensor, torch.Tensor]]
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """All ranks' rows of this step, rank order, per layer (one all_gather of the padded
        rows, one of their counts)."""
        like = rows[0][0]
        width = like.shape[1]
        packed = like.new_zeros(len(rows), 2, self.rows_per_step, width)
        counts = torch.tensor([keys.shape[0] for keys, _ in rows], dtype=torch.int64,
                              device=like.device)
        for layer, (keys, values) in enumerate(rows):
            packed[layer, 0, :keys.shape[0]] = keys
            packed[layer, 1, :values.shape[0]] = values
        all_packed = [torch.empty_like(packed) for _ in range(self.world)]
        all_counts = [torch.empty_like(counts) for _ in range(self.world)]
        dist.all_gather(all_counts, counts)
        dist.all_gather(all_packed, packed)
        gathered = []
        for layer in range(len(rows)):
            parts = [(data[layer, 0, :int(n[layer])], data[layer, 1, :int(n[layer])])
                     for data, n in zip(all_packed, all_counts)]
            gathered.append((torch.cat([k for k, _ in parts]), torch.cat([v for _, v in parts])))
        return gathered

    def due(self, step: int) -> bool:
        """Whether prototypes are rebuilt after `step` (1-based count of finished steps); the
        step is remembered for the refresh log."""
        self.step = step
        warm = self.config.warmup_iterations
        return step >= warm and (step - warm) % self.config.refresh_stride == 0

    def refresh(self) -> dict[str, float]:
        """Rebuild M_K / M_V of every layer from its bank; returns summary numbers.

        With several ranks only rank 0 holds the banks: `refresh_synced` calls it there and
        broadcasts the result."""
        device = self.decoder.head.weight.device
        gpu_device = device.index if device.type == "cuda" else None
        if gpu_device is None and device.type == "cuda":
            gpu_device = torch.cuda.current_device()
        snapshots = [bank.snapshot() for bank in self.banks]
        counts = layer_counts([keys.shape[0] for keys, _ in snapshots], self.full_config)
        per_layer, stats = layer_prototypes(snapshots, self.full_config, gpu_device)
        self.decoder.set_memory_prototypes([
            (torch.from_numpy(mk).to(device), torch.from_numpy(mv).to(device))
            for mk, mv in per_layer])
        record = {"step": self.step, "prototypes": [int(mk.shape[0]) for mk, _ in per_layer],
                  "bank_keys": [int(keys.shape[0]) for keys, _ in snapshots],
                  "knn": [c.knn for c in counts],
                  "warnings": [c.warning for c in counts if c.warning],
                  "seconds": round(sum(float(s.seconds) for s in stats), 3)}
        self.refresh_log.append(record)
        self._log_refresh(record)
        if self.on_refresh is not None:
            self.on_refresh(record)
        return {"prototypes": per_layer[0][0].shape[0],
                "inertia": sum(float(s.inertia) for s in stats),
                "fit_points": sum(s.n_fit_points for s in stats),
                "seconds": sum(float(s.seconds) for s in stats)}

    def _log_refresh(self, record: dict) -> None:
        """One line per refresh (and one per warning it raised)."""
        def per_layer(values: list[int]) -> str:
            return "/".join(str(v) for v in values)
        when = f"step {record['step']}" if record["step"] is not None else "a step"
        self.log(f"memory refresh after {when}: {per_layer(record['prototypes'])} prototypes "
                 f"per layer from {per_layer(record['bank_keys'])} bank keys (knn "
                 f"{per_layer(record['knn'])}) in {record['seconds']:.1f}s")
        for warning in record["warnings"]:
            self.log(warning)

    def installed(self) -> list[int]:
        """Prototypes the decoder holds now, per layer (what a checkpoint saved now holds)."""
        return [int(keys.shape[0]) for keys, _ in self.decoder.memory_prototypes()]

    def warnings(self) -> list[str]:
        """What a finished run should state (e.g. in its manifest's `warnings`): a decoder
        left with 0 prototypes (no refresh ran: the run ended before
        `memory.warmup_iterations`), or fewer than `memory.n_prototypes` at the last refresh."""
        installed, wanted = self.installed(), self.config.n_prototypes
        steps = f"after {self.step} steps" if self.step is not None else "without a step"
        if not any(installed):
            return [f"warning: memory.self is on but the decoder has 0 prototypes {steps}: no "
                    f"refresh ran (the first comes after memory.warmup_iterations="
                    f"{self.config.warmup_iterations} steps), so this is a plain transformer, "
                    f"not PMA"]
        if min(installed) < wanted:
            return [f"warning: the decoder holds {'/'.join(map(str, installed))} prototypes "
                    f"per layer, fewer than memory.n_prototypes={wanted} (the banks held fewer "
                    f"keys at the last refresh)"]
        return []

    def refresh_synced(self) -> None:
        """`refresh` on rank 0, then every rank installs the same prototypes (broadcast from
        rank 0; collectives on the training device, as NCCL needs)."""
        if self.rank == 0:
            self.refresh()
        if self.world == 1:
            return
        per_layer = self.decoder.memory_prototypes()
        device = per_layer[0][0].device
        rows = torch.tensor([per_layer[0][0].shape[0] if self.rank == 0 else 0], device=device)
        dist.broadcast(rows, 0)
        width = self.decoder.dims.d_model
        synced = []
        for keys, values in per_layer:
            if self.rank != 0:
                keys = torch.zeros(int(rows), width, device=device)
                values = torch.zeros(int(rows), width, device=device)
            dist.broadcast(keys, 0)
            dist.broadcast(values, 0)
            synced.append((keys, values))
        self.decoder.set_memory_prototypes(synced)

    # -- checkpoints --------------------------------------------------------------------------

    def state(self) -> dict:
        """Everything to continue exactly, banks included (in memory; see `save_banks`)."""
        return {"banks": [bank.state() for bank in self.banks],
                "generator": self.generator.get_state()}

    def load_state(self, state: dict) -> None:
        for bank, bank_state in zip(self.banks, state["banks"]):
            bank.load_state(bank_state)
        self.generator.set_state(state["generator"])

    def save_banks(self, checkpoint: Path) -> dict:
        """Write the banks to a new file beside `checkpoint` (float16, `save_atomic`) and
        return the small entry the checkpoint itself stores under "memory".

        Call before writing the checkpoint and `drop_stale_banks` after it: at any moment the
        checkpoint on disk names a banks file that is complete, so the pair stays consistent
        whenever the run is killed."""
        token = uuid.uuid4().hex[:16]
        path = banks_file(checkpoint, token)
        layers = []
        for bank in self.banks:
            state = bank.state()
            keys, values = state["keys"], state["values"]
            width = keys[0].shape[1] if keys else 0
            layers.append({
                "keys": torch.cat(keys) if keys else torch.zeros(0, width, dtype=torch.float16),
                "values": torch.cat(values) if values else
                torch.zeros(0, width, dtype=torch.float16),
                "sizes": torch.tensor([k.shape[0] for k in keys], dtype=torch.int64),
                "generator": state["generator"]})
        save_atomic({"format": BANKS_FORMAT, "token": token, "layers": layers}, path)
        return {"banks_file": path.name, "token": token, "generator": self.generator.get_state()}

    def load_banks(self, checkpoint: Path, entry: dict, banks: bool = True) -> None:
        """Restore what `save_banks` wrote for `checkpoint` (its "memory" entry); `banks=False`
        restores only the sampling state (DDP ranks other than 0 keep no banks)."""
        name = entry.get("banks_file")
        if name is None:
            raise RuntimeError(f"{checkpoint}: no memory banks entry; run with --force to start "
                               f"over")
        self.generator.set_state(entry["generator"].to("cpu", torch.uint8))
        if not banks:
            return
        path = Path(checkpoint).with_name(name)
        if not path.is_file():
            raise RuntimeError(f"{checkpoint} needs its memory banks {path}, which is missing; "
                               f"run with --force to start over")
        payload = load_checkpoint(path, "memory banks file", "run with --force to start over",
                                  keys=("format", "token", "layers"))
        if payload.get("format") != BANKS_FORMAT or payload.get("token") != entry["token"] or \
                len(payload["layers"]) != len(self.banks):
            raise RuntimeError(f"{path} does not belong to {checkpoint}; run with --force to "
                               f"start over")
        for bank, layer in zip(self.banks, payload["layers"]):
            sizes = layer["sizes"].tolist()
            bank.load_state({"keys": [rows.clone() for rows in layer["keys"].split(sizes)],
                             "values": [rows.clone() for rows in layer["values"].split(sizes)],
                             "generator": layer["generator"]})

    @staticmethod
    def check_resume_point(path: Path, ckpt: dict) -> None:
        """`pick_resume_point` check of a resume point's memory: the banks file it names is
        there, complete (its tensors are only mapped here) and carries its token."""
        entry = ckpt.get("memory") or {}
        name = entry.get("banks_file")
        if not name:
            raise UnreadableCheckpoint(path, "it names no memory banks file")
        try:
            payload = load_checkpoint(path.with_name(name), "memory banks file", "",
                                      keys=("token",), mmap=True)
        except FileNotFoundError:
            raise UnreadableCheckpoint(path, f"its memory banks file {name} is missing") from None
        if payload["token"] != entry.get("token"):
            raise UnreadableCheckpoint(path, f"{name} is another checkpoint's memory banks file")

    @staticmethod
    def drop_stale_banks(last: Path) -> None:
        """`drop_stale_banks` (the module function), for the training loop."""
        drop_stale_banks(last)

    def dump(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Current bank contents per layer (for `runs/<dataset>/memory/banks.npz`)."""
        snaps = [bank.snapshot() for bank in self.banks]
        return [k.numpy() for k, _ in snaps], [v.numpy() for _, v in snaps]


def drop_stale_banks(last: Path) -> None:
    """Remove the memory banks files beside `last` (and `.tmp`s of them) that neither `last`
    nor `last.prev.pt` names: each resume point keeps its own banks file."""
    keep = set()
    for checkpoint in (last, previous_path(last)):
        entry = read_entry(checkpoint, "memory")
        if isinstance(entry, dict) and entry.get("banks_file"):
            keep.add(entry["banks_file"])
    for pattern in (f"{last.stem}.banks.*.pt", f"{last.stem}.banks.*.pt.tmp"):
        for path in last.parent.glob(pattern):
            if path.name not in keep:
                path.unlink(missing_ok=True)
