"""The paper's prototype updater: refine k-means prototypes with the members' own choices.

For a member of prototype j, one of their pairs (q, r+, r-) is the target and their other pairs
are history events (h, r+ - r-). Everything is embedded by the same embedder as the users:

    o_i   = tanh(W_h [h_i ; r+_i - r-_i])                      one vector per history event
    alpha = softmax((o_i . a_j + rho * o_i . q) / sqrt(d))     attention over the events
    s_q   = sum_i alpha_i o_i
    z     = a_j + lambda_q W_q q + lambda_s W_s s_q            the user-conditioned preference
    loss  = BCE(z . r+ - z . r-, 1)
          + centroid_weight * |a_j - c_j|^2   (stay near the members' k-means centroid c_j)
          + ema_weight      * |a_j - ema_j|^2 (move smoothly: ema_j is a running mean of a_j)

Prototypes a_j are re-normalised to unit length after each step, so they stay comparable with
the (unit) user embeddings that `nearest()` searches with. W_q and W_s start at zero: before
training z = a_j, so "before" numbers are those of the plain k-means prototypes.
Leave-one-out: a target pair is never among its own history events.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class UpdaterSettings:
    epochs: int = 8
    lr: float = 0.01
    batch_size: int = 128
    rho: float = 1.0
    lambda_q: float = 0.5
    lambda_s: float = 0.5
    centroid_weight: float = 0.05
    ema_weight: float = 0.05
    ema_decay: float = 0.9
    max_history: int = 16  # history events per user (the most recent ones)
    seed: int = 0


@dataclass
class UserPairs:
    """One user's history, embedded: row i of each array belongs to pair i."""

    prompts: np.ndarray  # [n, d]
    chosen: np.ndarray  # [n, d]
    rejected: np.ndarray  # [n, d]

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class UpdaterResult:
    centroids: np.ndarray  # [K, d] float32, unit rows
    loss_before: float
    loss_after: float
    agreement_before: float  # share of pairs with z.r+ > z.r-
    agreement_after: float
    examples: int
    settings: UpdaterSettings
    epoch_losses: list[float] = field(default_factory=list)

    def meta(self) -> dict:
        """What a build records about its refinement."""
        return {
            "loss_before": round(self.loss_before, 6), "loss_after": round(self.loss_after, 6),
            "agreement_before": round(self.agreement_before, 6), "agreement_after": round(self.agreement_after, 6),
            "examples": self.examples, "settings": asdict(self.settings),
        }


def _examples(assignments: Sequence[int], users: Sequence[UserPairs], max_history: int):
    """Tensors for every (user, pair) example; history events are kept per user, not per example."""
    import torch

    dim = next(len(u.prompts[0]) for u in users if len(u))
    width = max(1, min(max_history, max(len(u) for u in users)))
    n_users = len(users)
    events = torch.zeros(n_users, width, 2 * dim)
    event_pair = torch.full((n_users, width), -1, dtype=torch.long)  # which pair an event is (-1: padding)
    ex_user, ex_pair, q, rp, rn = [], [], [], [], []
    for ui, u in enumerate(users):
        if not len(u):
            continue
        diff = np.asarray(u.chosen, np.float32) - np.asarray(u.rejected, np.float32)
        recent = range(max(0, len(u) - width), len(u))
        for slot, pi in enumerate(recent):
            events[ui, slot] = torch.from_numpy(np.concatenate([u.prompts[pi], diff[pi]]).astype(np.float32))
            event_pair[ui, slot] = pi
        for pi in range(len(u)):
            ex_user.append(ui)
            ex_pair.append(pi)
        q.append(np.asarray(u.prompts, np.float32))
        rp.append(np.asarray(u.chosen, np.float32))
        rn.append(np.asarray(u.rejected, np.float32))
    ex_user_t = torch.tensor(ex_user, dtype=torch.long)
    return {
        "events": events,
        "event_pair": event_pair,
        "user": ex_user_t,
        "proto": torch.tensor([assignments[u] for u in ex_user], dtype=torch.long),
        "pair": torch.tensor(ex_pair, dtype=torch.long),
        "q": torch.from_numpy(np.concatenate(q)),
        "rp": torch.from_numpy(np.concatenate(rp)),
        "rn": torch.from_numpy(np.concatenate(rn)),
    }


class _Updater:
    """The trainable parts: prototypes A [K, d], W_h [d, 2d], W_q and W_s [d, d]."""

    def __init__(self, centroids: np.ndarray, settings: UpdaterSettings):
        import torch

        self.torch = torch
        self.s = settings
        k, d = centroids.shape
        self.d = d
        self.A = torch.nn.Parameter(torch.from_numpy(np.array(centroids, dtype=np.float32)))
        self.W_h = torch.nn.Linear(2 * d, d, bias=False)
        self.W_q = torch.nn.Linear(d, d, bias=False)
        self.W_s = torch.nn.Linear(d, d, bias=False)
        torch.nn.init.zeros_(self.W_q.weight)
        torch.nn.init.zeros_(self.W_s.weight)

    def parameters(self):
        return [self.A, *self.W_h.parameters(), *self.W_q.parameters(), *self.W_s.parameters()]

    def margins(self, ex: dict, idx):
        """z . (r+ - r-) for the examples `idx`."""
        torch, s = self.torch, self.s
        users, pairs = ex["user"][idx], ex["pair"][idx]
        events = ex["events"][users]  # [B, H, 2d]
        # an event takes part if it is a real pair and not the target pair itself
        live = (ex["event_pair"][users] >= 0) & (ex["event_pair"][users] != pairs[:, None])
        q, a = ex["q"][idx], self.A[ex["proto"][idx]]
        o = torch.tanh(self.W_h(events))  # [B, H, d]
        logits = ((o * a[:, None, :]).sum(-1) + s.rho * (o * q[:, None, :]).sum(-1)) / math.sqrt(self.d)
        logits = logits.masked_fill(~live, float("-inf"))
        alpha = torch.softmax(logits, dim=-1)
        alpha = torch.where(live.any(-1, keepdim=True), alpha, torch.zeros_like(alpha))  # no events: s_q = 0
        s_q = (alpha[..., None] * o).sum(1)
        z = a + s.lambda_q * self.W_q(q) + s.lambda_s * self.W_s(s_q)
        return (z * (ex["rp"][idx] - ex["rn"][idx])).sum(-1)

    def evaluate(self, ex: dict) -> tuple[float, float]:
        torch = self.torch
        with torch.no_grad():
            m = self.margins(ex, torch.arange(len(ex["user"])))
            loss = torch.nn.functional.softplus(-m).mean()  # = BCE(sigmoid(m), 1)
            return float(loss), float((m > 0).float().mean())


def refine_prototypes(
    centroids: np.ndarray,
    assignments: Sequence[int],
    users: Sequence[UserPairs],
    settings: UpdaterSettings = UpdaterSettings(),
    progress=None,
) -> UpdaterResult:
    """Refine `centroids` [K, d] (unit rows) with the pairs of their members.

    `assignments[i]` is the prototype of `users[i]`. Deterministic for a given `settings.seed`.
    `progress(advance)` is called once per epoch (a progress bar's hook)."""
    import torch

    centroids = np.asarray(centroids, dtype=np.float32)
    if not any(len(u) for u in users):
        return UpdaterResult(centroids, math.nan, math.nan, math.nan, math.nan, 0, settings)
    torch.manual_seed(settings.seed)
    model = _Updater(centroids, settings)
    ex = _examples(assignments, users, settings.max_history)
    n = len(ex["user"])
    anchor = torch.from_numpy(centroids.copy())  # the k-means centroids: the centroid regulariser's target
    ema = anchor.clone()
    loss_before, agree_before = model.evaluate(ex)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    epoch_losses = []
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, settings.batch_size):
            idx = order[start:start + settings.batch_size]
            m = model.margins(ex, idx)
            used = ex["proto"][idx].unique()
            loss = (
                torch.nn.functional.softplus(-m).mean()
                + settings.centroid_weight * ((model.A[used] - anchor[used]) ** 2).sum(-1).mean()
                + settings.ema_weight * ((model.A[used] - ema[used]) ** 2).sum(-1).mean()
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                model.A.data = torch.nn.functional.normalize(model.A.data, dim=-1)
                ema = settings.ema_decay * ema + (1 - settings.ema_decay) * model.A.data
            total += loss.item() * len(idx)
        epoch_losses.append(total / n)
        if progress:
            progress(1)
    loss_after, agree_after = model.evaluate(ex)
    refined = model.A.detach().numpy().astype(np.float32)
    return UpdaterResult(refined, loss_before, loss_after, agree_before, agree_after, n, settings, epoch_losses)
