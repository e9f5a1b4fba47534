"""ADA for label maps: the controller's p and the label-safe augmentations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fundus_studio.labels import NUM_CLASSES, OUTSIDE
from training.ada import ADAConfig, AdaptiveAugment, augment


def one_hot_batch(b: int = 6, s: int = 16, seed: int = 0) -> torch.Tensor:
    idx = torch.randint(0, NUM_CLASSES, (b, s, s), generator=torch.Generator().manual_seed(seed))
    return F.one_hot(idx, NUM_CLASSES).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize(("sign", "moves"), [(1.0, "up"), (-1.0, "down")])
def test_p_follows_r_t_and_stays_in_range(sign: float, moves: str) -> None:
    cfg = ADAConfig(target=0.6, interval=2, speed_images=100, p_init=0.4, p_max=0.8)
    ada = AdaptiveAugment(cfg)
    history = [ada.p]
    for _ in range(40):
        ada.accumulate(sign_sum=sign * 8, count=8)  # r_t = ±1: above / below the target
        history.append(ada.p)
    assert ada.r_t == sign
    if moves == "up":
        assert history[2] > history[0] and ada.p == pytest.approx(cfg.p_max)
    else:
        assert history[2] < history[0] and ada.p == 0.0
    assert all(0.0 <= p <= cfg.p_max < 1.0 for p in history)


def test_p_changes_only_every_interval_by_images_over_speed() -> None:
    ada = AdaptiveAugment(ADAConfig(target=0.6, interval=3, speed_images=1000))
    ada.accumulate(sign_sum=10, count=10)
    ada.accumulate(sign_sum=10, count=10)
    assert ada.p == 0.0
    ada.accumulate(sign_sum=10, count=10)
    assert ada.p == pytest.approx(30 / 1000)


def test_disabled_ada_keeps_p_but_measures_r_t() -> None:
    ada = AdaptiveAugment(ADAConfig(enabled=False, interval=1, p_init=0.2))
    ada.accumulate(sign_sum=4, count=4)
    assert ada.p == 0.2 and ada.r_t == 1.0


def test_state_round_trip() -> None:
    a = AdaptiveAugment(ADAConfig(interval=5))
    a.accumulate(sign_sum=3, count=4)
    b = AdaptiveAugment(ADAConfig(interval=5))
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()


@pytest.mark.parametrize("bad", [{"p_max": 1.0}, {"target": 1.5}, {"interval": 0}, {"translate": 0.6},
                                 {"p_init": 0.9, "p_max": 0.8}])
def test_invalid_config_raises(bad: dict) -> None:
    with pytest.raises(ValueError):
        ADAConfig(**bad)


def test_augment_keeps_one_hot_and_fills_outside() -> None:
    x = one_hot_batch()
    y = augment(x, p=1.0, config=ADAConfig(translate=0.25), generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    assert torch.all((y == 0) | (y == 1)) and torch.all(y.sum(1) == 1)
    assert not torch.equal(y, x)
    # Translations uncover borders: those pixels are the outside class.
    assert (y.argmax(1) == OUTSIDE).float().mean() > (x.argmax(1) == OUTSIDE).float().mean()


def test_augment_keeps_softmax_normalised_and_passes_gradients() -> None:
    logits = torch.randn(4, NUM_CLASSES, 12, 12, requires_grad=True)
    probs = logits.softmax(1)
    y = augment(probs, p=1.0, config=ADAConfig(), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(y.sum(1), torch.ones(4, 12, 12))
    (y * torch.randn_like(y)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_without_translation_each_map_is_a_dihedral_transform() -> None:
    x = one_hot_batch(b=8, s=8)
    y = augment(x, p=0.7, config=ADAConfig(translate=0.0), generator=torch.Generator().manual_seed(3))
    for xi, yi in zip(x, y):
        candidates = [torch.rot90(xi, k, dims=(1, 2)) for k in range(4)]
        candidates += [c.flip(2) for c in candidates]
        assert any(torch.equal(yi, c) for c in candidates)


def test_p_zero_is_identity_and_seed_reproducible() -> None:
    x = one_hot_batch()
    assert torch.equal(augment(x, p=0.0, config=ADAConfig()), x)
    a = augment(x, p=0.5, config=ADAConfig(), generator=torch.Generator().manual_seed(9))
    b = augment(x, p=0.5, config=ADAConfig(), generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
