"""Streaming per-unit moments (mean, variance, skew, kurtosis, firing frequency), exact in float64.

Each batch's central moments are computed in float64 and merged into the running ones with the
pairwise update of Pébay (2008), so a unit whose mean is far larger than its spread loses no
precision, and two partial statistics over disjoint tokens merge into exactly the statistics of
both. This is the streaming primitive behind the neuron table and the family explanations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_universality.core.errors import EmptyTokenSourceError


@dataclass
class Moments:
    """Running central moments of ``n_units`` units, up to fourth order, in float64.

    ``var``, ``skew`` and ``kurt`` are population moments; ``kurt`` is not excess (a Gaussian has
    3), as in the paper. Units with zero variance get NaN skew and kurtosis.

    Examples:
        >>> x = torch.randn(1000, 3, dtype=torch.float64)
        >>> m = Moments.zeros(3)
        >>> for chunk in x.split(128):
        ...     _ = m.update(chunk)
        >>> torch.allclose(m.mean, x.mean(0)) and torch.allclose(m.var, x.var(0, unbiased=False))
        True
    """

    n: int
    mean: Float[Tensor, " units"]
    m2: Float[Tensor, " units"]
    m3: Float[Tensor, " units"]
    m4: Float[Tensor, " units"]
    n_active: Int[Tensor, " units"]
    threshold: float = 0.0

    @classmethod
    def zeros(
        cls, n_units: int, device: str | torch.device = "cpu", threshold: float = 0.0
    ) -> Moments:
        """Empty statistics; ``threshold`` defines "active" for :attr:`freq` (``x > threshold``)."""
        z = torch.zeros(n_units, dtype=torch.float64, device=device)
        return cls(
            0, z, z.clone(), z.clone(), z.clone(), torch.zeros_like(z, dtype=torch.int64), threshold
        )

    @classmethod
    def of(cls, x: Float[Tensor, "tok units"], threshold: float = 0.0) -> Moments:
        """Moments of one block of activations."""
        x64 = x.to(torch.float64)
        n = x64.shape[0]
        if n == 0:
            return cls.zeros(x64.shape[1], x64.device, threshold)
        mean = x64.mean(0)
        d = x64 - mean
        d2 = d * d
        return cls(
            n,
            mean,
            d2.sum(0),
            (d2 * d).sum(0),
            (d2 * d2).sum(0),
            (x > threshold).sum(0).to(torch.int64),
            threshold,
        )

    def update(self, x: Float[Tensor, "tok units"]) -> Moments:
        """Add a batch of activations (in place); returns ``self``."""
        self.merge_(Moments.of(x.to(self.mean.device), self.threshold))
        return self

    def merge_(self, other: Moments) -> Moments:
        """Merge statistics of disjoint tokens into ``self`` (Pébay's pairwise formulas)."""
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.m2, self.m3, self.m4 = (
                other.n,
                other.mean.clone(),
                other.m2.clone(),
                other.m3.clone(),
                other.m4.clone(),
            )
            self.n_active = other.n_active.clone()
            return self
        na, nb = float(self.n), float(other.n)
        n = na + nb
        delta = other.mean - self.mean
        d_n = delta / n
        m2 = self.m2 + other.m2 + delta * d_n * na * nb
        m3 = (
            self.m3
            + other.m3
            + delta * d_n * d_n * na * nb * (na - nb)
            + 3.0 * d_n * (na * other.m2 - nb * self.m2)
        )
        m4 = (
            self.m4
            + other.m4
            + delta * d_n * d_n * d_n * na * nb * (na * na - na * nb + nb * nb)
            + 6.0 * d_n * d_n * (na * na * other.m2 + nb * nb * self.m2)
            + 4.0 * d_n * (na * other.m3 - nb * self.m3)
        )
        self.mean = self.mean + d_n * nb
        self.m2, self.m3, self.m4 = m2, m3, m4
        self.n = int(n)
        self.n_active = self.n_active + other.n_active
        return self

    def _require_data(self) -> None:
        if self.n == 0:
            raise EmptyTokenSourceError(
                "No token was accumulated, so the moments are undefined. Check that the token"
                " source is not empty and that not every position was excluded."
            )

    @property
    def var(self) -> Float[Tensor, " units"]:
        """Population variance."""
        self._require_data()
        return self.m2 / self.n

    @property
    def std(self) -> Float[Tensor, " units"]:
        return self.var.sqrt()

    @property
    def skew(self) -> Float[Tensor, " units"]:
        """Population skewness (``scipy.stats.skew(bias=True)``); NaN for constant units."""
        self._require_data()
        m2 = self.m2 / self.n
        return torch.where(m2 > 0, (self.m3 / self.n) / m2.pow(1.5), torch.nan)

    @property
    def kurt(self) -> Float[Tensor, " units"]:
        """Population kurtosis, not excess (``scipy.stats.kurtosis(fisher=False)``)."""
        self._require_data()
        m2 = self.m2 / self.n
        return torch.where(m2 > 0, (self.m4 / self.n) / (m2 * m2), torch.nan)

    @property
    def freq(self) -> Float[Tensor, " units"]:
        """Share of tokens on which each unit is active (``x > threshold``)."""
        self._require_data()
        return self.n_active.to(torch.float64) / self.n

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors for saving with safetensors (see :meth:`from_state_dict`)."""
        return {
            "n": torch.tensor([self.n], dtype=torch.int64),
            "threshold": torch.tensor([self.threshold], dtype=torch.float64),
            "mean": self.mean,
            "m2": self.m2,
            "m3": self.m3,
            "m4": self.m4,
            "n_active": self.n_active,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> Moments:
        return cls(
            int(state["n"][0]),
            state["mean"],
            state["m2"],
            state["m3"],
            state["m4"],
            state["n_active"],
            float(state["threshold"][0]),
        )
