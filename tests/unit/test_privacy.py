"""Disclosure control of answers without a visa: minimum cell size, rounding, query budget."""

from __future__ import annotations

import pytest
from gdx.publish.privacy import BudgetExhausted, CountPolicy, Privacy, QueryBudget
from gdx.publish.settings import PublishSettings
from hypothesis import given
from hypothesis import strategies as st


@given(count=st.integers(0, 10_000), k=st.integers(0, 50), n=st.integers(0, 100))
def test_a_shown_count_never_reveals_a_group_smaller_than_k(count: int, k: int, n: int) -> None:
    shown = CountPolicy(k, n).protect(count)
    assert shown.value == 0 or shown.value >= max(k, 1)
    assert shown.exists == (shown.value > 0)
    if count >= max(k, 1):
        assert shown.value >= count  # rounding goes up, never hides a real group
        if n > 1:
            assert shown.value % n == 0 and shown.value - count < n
    else:
        assert shown.value == 0


@given(k=st.integers(2, 20), n=st.integers(0, 20), small=st.integers(1, 19))
def test_suppressed_and_true_zero_are_indistinguishable(k: int, n: int, small: int) -> None:
    policy = CountPolicy(k, n)
    if small < k:
        assert policy.protect(small) == policy.protect(0)


def test_no_policy_shows_exact_counts() -> None:
    assert CountPolicy().protect(3) == CountPolicy(1, 1).protect(3)
    assert CountPolicy().protect(3).value == 3 and CountPolicy().protect(3).precision == "exact"
    assert not CountPolicy(1, 1).active and CountPolicy(5).active
    with pytest.raises(ValueError):
        CountPolicy(-1)


def test_variant_counts_skip_the_cell_size_already_applied_to_carriers() -> None:
    policy = CountPolicy(5, 10)
    assert policy.protect(1, min_cell=False).value == 10  # one variant, each with >= 5 carriers
    assert policy.protect(1).value == 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_budget_is_a_sliding_window_per_client() -> None:
    clock = Clock()
    budget = QueryBudget(2, 60, clock=clock)
    assert budget.charge("a") == 1 and budget.charge("a") == 0
    with pytest.raises(BudgetExhausted) as refused:
        budget.charge("a")
    assert 59 <= refused.value.retry_after <= 60 and "2 queries per 60 s" in str(refused.value)
    assert budget.charge("b") == 1  # others are not affected
    clock.now += 30
    with pytest.raises(BudgetExhausted):
        budget.charge("a")
    clock.now += 30.5  # the first two queries have left the window
    assert budget.charge("a") == 1


def test_budget_zero_means_unlimited_and_idle_clients_are_forgotten() -> None:
    unlimited = QueryBudget(0, 60)
    for _ in range(100):
        unlimited.charge("a")
    clock = Clock()
    budget = QueryBudget(1, 10, clock=clock)
    for i in range(1023):
        budget.charge(f"client-{i}")
    clock.now += 20
    budget.charge("late")  # the 1024th charge sweeps idle clients
    assert len(budget._spent) == 1


def test_privacy_from_settings_defaults() -> None:
    privacy = Privacy.from_settings(PublishSettings.from_env({}))
    assert privacy.counts == CountPolicy(0, 0)
    assert (privacy.budget.limit, privacy.budget.window) == (1000, 3600.0)
    tight = Privacy.from_settings(PublishSettings.from_env({"GDX_PUBLISH_MIN_CELL_SIZE": "5",
                                                            "GDX_PUBLISH_COUNT_ROUNDING": "10",
                                                            "GDX_PUBLISH_BUDGET_QUERIES": "3"}))
    assert tight.counts == CountPolicy(5, 10) and tight.budget.limit == 3
