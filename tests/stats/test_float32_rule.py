"""One rule decides where float32 products of unit pairs are safe, for the exhaustive update
(CrossMoments) and the screened pairs (PairMoments) alike: a unit's sum of squares per token
above 1e8 x float32's smallest normal number (and its sum below 1e37). Both paths take the same
decision on the same batch, and both meet their bounds against numpy float64.

Before the rule was shared the two disagreed on units of spread ~1e-16 on a few hundred tokens:
the exhaustive update refused any unit with |x - c| < 1e-15 (sending the batch to float64),
the screened pairs accepted any chunk with sum of squares above 1e-28."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_universality.stats.cross_moments import CrossMoments
from tl_universality.stats.pair_moments import PairMoments, float32_safe, sequence_chunks

F64 = torch.float64
ROWS = 4000  # one batch, ten sequences of 400 tokens


def units(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A: two units uniform on [-scale, scale] (so |x - mean| < scale on every token); B: A's
    first unit plus a third of its spread in noise (r ≈ 0.95), and an independent unit."""
    g = torch.Generator().manual_seed(0)
    u = torch.rand(ROWS, 4, generator=g, dtype=F64) * 2 - 1
    a = u[:, :2] * scale
    b = torch.stack([(u[:, 0] + u[:, 2] / 3) * scale, u[:, 3] * scale], 1)
    return a, b


def numpy_corr(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    full = np.corrcoef(np.concatenate([a.numpy(), b.numpy()], 1).T)
    return full[:2, 2:]


@pytest.mark.parametrize(
    ("scale", "fits"),
    [
        (5e-15, True),  # sum of squares per token ~8e-30: above the floor of 1.18e-30
        (8e-16, False),  # ~2.1e-31 per token: below it
        (3e-16, False),
        (1e-23, False),  # float32 squares of these are exactly 0: the values are not
        (1.0, True),
        (1e18, False),  # 4000 x 1e36 above the ceiling of 1e37
    ],
)
def test_both_paths_take_the_same_decision_and_keep_their_bound(scale: float, fits: bool):
    a, b = (v.float().double() for v in units(scale))  # what float32 activations hold
    want = numpy_corr(a, b)
    bound = 1e-6 if fits else 1e-12  # float32 products, or the float64 fallback

    stats = CrossMoments(2, 2).update(a.float(), b.float())
    assert stats.fallback_batches == (0 if fits else 1)
    assert np.abs(stats.corr().numpy() - want).max() <= bound

    lengths = [400] * 10
    shift = torch.zeros(2, dtype=F64)
    assert float32_safe(sequence_chunks(a, lengths, shift, dtype=torch.float32)) == fits
    cols = torch.tensor([[0, 1], [1, 0]])
    pm = PairMoments.fresh(cols, n_b=2).update(a, b, lengths=lengths, dtype=torch.float32)
    got = pm.corr().numpy()
    assert np.abs(got - np.take_along_axis(want, cols.numpy(), 1)).max() <= bound


def few_valued_twins(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four units that take few values, and twins of them with 0, 1, 10 and 30% of tokens
    redrawn (r from 1 down to ~0.6)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "±1":
        levels, probs = torch.tensor([-1.0, 1.0]), torch.tensor([0.5, 0.5])
    elif kind == "three levels":
        levels, probs = torch.tensor([-1.0, 0.3, 2.0]), torch.tensor([1 / 3] * 3)
    else:  # resting on one inner value, rarely off it
        levels, probs = torch.tensor([-1.25, 0.375, 2.0]), torch.tensor([0.06, 0.88, 0.06])
    draw = lambda k: levels[torch.multinomial(probs, n * k, True, generator=g)].view(n, k)  # noqa: E731
    x = draw(4).double()
    redraw = torch.rand(n, 4, generator=g, dtype=F64) < torch.tensor([0, 0.01, 0.1, 0.3])
    return x, torch.where(redraw, draw(4).double(), x)


@pytest.mark.parametrize("kind", ["±1", "three levels", "one inner value"])
def test_few_valued_units_are_multiplied_in_float64(kind: str):
    """Units that take few values are the case float32 products cannot hold to 1e-6: every
    product repeats one of a few values, so a float32 sum rounds the same way at every step
    instead of at random (±1 twins reached 2e-6 over batches of 32,768 tokens, a unit resting on
    one inner value 1.9e-6). The update detects them and multiplies their rows in float64 (from
    their float32 values), the rest of the batch in float32."""
    n, batch = 65536, 32768
    x, y = few_valued_twins(kind, n, seed=0)
    want = np.corrcoef(x.T.numpy(), y.T.numpy())[:4, 4:]
    stats = CrossMoments(4, 4)
    for i in range(0, n, batch):
        stats.update(x[i : i + batch].float(), y[i : i + batch].float())
    assert stats.fallback_batches == 0 and stats.split_batches == 2
    assert np.abs(stats.corr().numpy() - want).max() <= 1e-7


def test_continuous_units_stay_float32_also_in_bfloat16():
    """The guard leaves units with continuous values alone, also when bfloat16 rounding makes
    some values repeat (GELU units and their twins): float32 products, within 1e-6."""
    n = 32768
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, 4, generator=g, dtype=F64)
    w = torch.randn(n, 4, generator=g, dtype=F64)
    gelu = torch.nn.functional.gelu
    x = gelu(z).bfloat16()
    y = gelu(z + torch.tensor([0.0, 0.05, 0.2, 0.5], dtype=F64) * w).bfloat16()
    want = np.corrcoef(x.double().T.numpy(), y.double().T.numpy())[:4, 4:]
    stats = CrossMoments(4, 4).update(x, y)
    assert stats.fallback_batches == 0
    assert np.abs(stats.corr().numpy() - want).max() <= 1e-6


@pytest.mark.parametrize("silent", [0.2, 0.4, 0.49])
def test_relu_twins_silent_on_part_of_the_batch_meet_1e6(silent: float):
    """ReLU units silent on 20-49% of tokens and their noisy twins, batches of 32,768 tokens
    (32 sequences of GPT-2's 1,024). Centred on their mean, every silent token entered the float32
    product as the same value −m, and the sums of such twins drifted to 1.2e-6 (40-49% silent);
    units silent on an eighth of the batch or more are now centred on exactly 0."""
    n, batch = 65536, 32768
    worst = 0.0
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, 4, generator=g, dtype=F64)
        w = torch.randn(n, 4, generator=g, dtype=F64)
        bias = -float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(silent)))
        x = torch.relu(z + bias).float()
        noise = torch.tensor([0.0, 0.05, 0.2, 0.5], dtype=F64)
        y = torch.relu(z + noise * w + bias).float()
        want = np.corrcoef(x.double().T.numpy(), y.double().T.numpy())[:4, 4:]
        stats = CrossMoments(4, 4)
        for i in range(0, n, batch):
            stats.update(x[i : i + batch], y[i : i + batch])
        assert stats.fallback_batches == 0  # float32 products: the centre does it
        worst = max(worst, float(np.abs(stats.corr().numpy() - want).max()))
    assert worst <= 1e-6


def test_few_valued_rows_do_not_depend_on_the_other_units():
    """Which pairs go float64 depends on the A unit alone: a few-valued unit gets its float64
    row whether or not continuous units share its statistics (a tile of a tiled or
    tile-parallel run holds some units, one process all), bit for bit, and a continuous pair
    stays within the float32 bound beside few-valued units.

    The continuous pair is not compared bit for bit: the BLAS may round a float32 GEMM's entry
    differently in matrices of different shapes (MKL on an AMD EPYC rounds the same entries of
    a 2 x 2 and a 6 x 6 product differently), so tilings agree to float32 rounding there."""
    n, batch = 65536, 32768
    few_x, few_y = few_valued_twins("±1", n, seed=2)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(n, 2, generator=g, dtype=F64)
    cont_x, cont_y = z, z + 0.5 * torch.randn(n, 2, generator=g, dtype=F64)
    together = CrossMoments(6, 6)
    alone = CrossMoments(2, 2)
    few_alone = CrossMoments(4, 4)
    for i in range(0, n, batch):
        s = slice(i, i + batch)
        together.update(torch.cat([cont_x[s], few_x[s]], 1).float(),
                        torch.cat([cont_y[s], few_y[s]], 1).float())  # fmt: skip
        alone.update(cont_x[s].float(), cont_y[s].float())
        few_alone.update(few_x[s].float(), few_y[s].float())
    assert torch.equal(together.corr()[2:, 2:], few_alone.corr())
    want = numpy_corr(cont_x.float().double(), cont_y.float().double())
    for got in (together.corr()[:2, :2], alone.corr()):
        assert np.abs(got.numpy() - want).max() <= 1e-7
    assert (together.corr()[:2, :2] - alone.corr()).abs().max() <= 5e-8


@pytest.mark.parametrize(("count", "few"), [(31, False), (32, True)])
def test_a_value_on_a_quarter_of_the_sample_takes_few_values(count: int, few: bool):
    """128 rows: the sample is every row. One value on 32 of them (a quarter) marks the unit,
    on 31 it does not; zeros never do, they make the unit centred on 0."""
    from tl_universality.stats.cross_moments.products import atoms

    x = torch.arange(1.0, 129.0)[:, None].repeat(1, 2)
    x[:count, 0] = 5.0
    x[:count, 1] = 0.0
    on_zero, marked = atoms(x)
    assert marked.tolist() == [few, False]
    assert on_zero.tolist() == [False, True]


@pytest.mark.parametrize("batch", [4096, 32768])
def test_units_with_a_large_mean_and_a_small_spread(batch: int):
    """``1000 + 0.01 z`` in float32 lies on ~1,000 values spaced 2^-14 apart; centred about an
    arbitrary mean every value carried the same fraction of that spacing, its float32 products
    rounded alike and r = 1 pairs of 256 such units drifted to 2.3e-7 (batches of 4,096) and
    6.8e-7 (32,768). Centred on the grid (:func:`on_grid`) the products are exact (1e-9)."""
    g = torch.Generator().manual_seed(11)
    n, u = 32768, 256
    z = torch.randn(n, u, generator=g, dtype=F64)
    x = (1000 + 0.01 * z).float()
    twins = -300 + 0.003 * (z[:, : u // 2] + 0.2 * torch.randn(n, u // 2, generator=g))
    y = torch.cat([x[:, : u // 2], twins.float()], 1)
    stats = CrossMoments(u, u, b_blocks=[(0, u // 2), (u // 2, u)])
    for i in range(0, n, batch):
        stats.update(x[i : i + batch], y[i : i + batch])
    xd, yd = x.double().numpy(), y.double().numpy()
    want = np.corrcoef(np.concatenate([xd, yd], 1).T)[:u, u:]
    assert np.abs(stats.corr().numpy() - want).max() <= 1e-7
    yc = yd - yd.mean(0)
    for k, lo in enumerate((0, u // 2)):
        part = yc[:, lo : lo + u // 2]
        gram = part.T @ part
        scale = np.sqrt(np.outer(np.diag(gram), np.diag(gram)))
        assert (np.abs(stats.within_b(k).numpy() - gram) / scale).max() <= 1e-7


def test_the_grid_centre_keeps_float64_values_and_sign_changing_units():
    from tl_universality.stats.cross_moments.products import on_grid

    mean = torch.tensor([0.3, 1000.1, -5.05], dtype=F64)
    low = torch.tensor([-1.0, 999.0, -6.0], dtype=F64)
    high = torch.tensor([1.0, 1001.0, -4.0], dtype=F64)
    assert torch.equal(on_grid(mean, low, high, torch.float64), mean)
    got = on_grid(mean, low, high, torch.float32)
    assert got[0] == mean[0]  # crosses 0: no common grid
    for k, spacing in ((1, 2.0**-14), (2, 2.0**-21)):  # 999 in [512, 1024); 4 in [4, 8)
        assert float(got[k]) / spacing % 1 == 0 and abs(float(got[k] - mean[k])) <= spacing / 2


@pytest.mark.parametrize("n", [512, 4096, 32768])
def test_spikes_below_the_spiky_share_stay_float32_within_the_bound(n: int):
    """Twins whose largest entry holds 1/80 to 1/12 of their batch energy (below and above
    SPIKY_SHARE = 1/16): those below stay in the float32 product and keep the bound (whole
    float32 products of such twins measured 3.3e-7 at 512 tokens, 1.1e-7 at 32,768)."""
    g = torch.Generator().manual_seed(5)
    u = 256
    share = torch.linspace(1 / 80, 1 / 12, u, dtype=F64)
    x = torch.randn(n, u, generator=g, dtype=F64)
    x[torch.randint(0, n, (u,), generator=g), torch.arange(u)] += (share * n / (1 - share)).sqrt()
    y = x + 1e-3 * torch.randn(n, u, generator=g, dtype=F64)
    x, y = x.float(), y.float()
    stats = CrossMoments(u, u).update(x, y)
    want = np.corrcoef(np.concatenate([x.double().numpy(), y.double().numpy()], 1).T)[:u, u:]
    assert np.abs(stats.corr().numpy() - want).max() <= 5e-7
