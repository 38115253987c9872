"""Streaming top-k: the strongest examples of every latent over a stream, in bounded memory.

Memory is ``n_latents × keep`` values and row numbers, whatever the length of the stream.
Each update merges the batch's active (latent, value, row) triples with the table's entries
and sorts them all once: its cost grows with the table's size (``n_latents × keep``) plus the
batch's active entries (``B × k``), never with ``B × n_latents`` (a dense activation matrix is
never formed).
"""

from __future__ import annotations

import numpy as np
import torch


class TopExamples:
    def __init__(self, n_latents: int, keep: int, device: torch.device | str = "cpu") -> None:
        self.n, self.keep = n_latents, keep
        self.values = torch.full((n_latents, keep), float("-inf"), device=device)  # [n, keep], best first
        self.rows = torch.full((n_latents, keep), -1, dtype=torch.int64, device=device)  # [n, keep]
        self.count = torch.zeros(n_latents, dtype=torch.int64, device=device)  # times each latent was active
        self.total = torch.zeros(n_latents, dtype=torch.float64, device=device)  # sum of its activations

    def update(self, latents: torch.Tensor, values: torch.Tensor, rows: torch.Tensor) -> None:
        """Add examples: three flat tensors of equal length (only active entries, values > 0)."""
        if latents.numel() == 0:
            return
        self.count += torch.bincount(latents, minlength=self.n)
        self.total += torch.bincount(latents, weights=values.double(), minlength=self.n)
        better = values.float() > self.values[latents, -1]  # can enter its latent's table at all
        latents, values, rows = latents[better], values[better], rows[better]
        if latents.numel() == 0:
            return
        # Candidates: the table's entries and the new ones; keep the best `keep` per latent.
        old = self.values > float("-inf")
        cand_lat = torch.cat([torch.arange(self.n, device=latents.device).repeat_interleave(old.sum(1)), latents])
        cand_val = torch.cat([self.values[old], values.float()])
        cand_row = torch.cat([self.rows[old], rows])
        order = torch.argsort(cand_val, descending=True, stable=True)
        order = order[torch.argsort(cand_lat[order], stable=True)]  # by latent, best first within each
        lat, val, row = cand_lat[order], cand_val[order], cand_row[order]
        starts = torch.searchsorted(lat, torch.arange(self.n, device=lat.device))
        rank = torch.arange(lat.numel(), device=lat.device) - starts[lat]
        keep = rank < self.keep
        self.values.fill_(float("-inf"))
        self.rows.fill_(-1)
        self.values[lat[keep], rank[keep]] = val[keep]
        self.rows[lat[keep], rank[keep]] = row[keep]

    def update_codes(self, indices: torch.Tensor, values: torch.Tensor, rows: torch.Tensor,
                     slot: torch.Tensor | None = None) -> None:
        """Add a batch of TopK codes: ``indices, values [B, k]``, ``rows [B]``. With ``slot``
        (from :func:`slots`), only the tracked latents count, each in its own slot."""
        active = values > 0
        if slot is not None:
            active &= slot[indices] >= 0
            indices = slot[indices]
        self.update(indices[active], values[active], rows[:, None].expand_as(indices)[active])

    def found(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, values)`` of one slot's examples, best first."""
        valid = self.rows[slot] >= 0
        return self.rows[slot][valid].cpu().numpy(), self.values[slot][valid].cpu().numpy()


def slots(tracked: torch.Tensor | list[int], n_latents: int) -> torch.Tensor:
    """``[n_latents]``: each tracked latent's slot in a :class:`TopExamples` table, -1 for the rest."""
    tracked = torch.as_tensor(tracked, dtype=torch.int64)
    slot = torch.full((n_latents,), -1, dtype=torch.int64)
    slot[tracked] = torch.arange(len(tracked))
    return slot
