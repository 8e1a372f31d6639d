"""An offset commit that fails while the broker is away is made again later: with no more input, nothing
else would commit, and the group's lag (what `gdx wait --idle` waits on) stayed above zero for good."""

from __future__ import annotations

from gdx.common import runner as runner_module
from gdx.common.errors import TransientError
from gdx.common.runner import Runner
from gdx.common.service import ServiceSettings
from kafka import TopicPartition
from kafka.errors import KafkaConnectionError


class Consumer:
    """Stands in for the broker being away: the first `failures` commits fail."""

    def __init__(self, failures: int):
        self.failures = failures
        self.committed: dict[TopicPartition, int] = {}

    def commit(self, offsets):
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("broker away")
        self.committed.update({tp: meta.offset for tp, meta in offsets.items()})


class Handler:
    def handle(self, event):
        raise TransientError("not used")


def make(failures: int) -> tuple[Runner, Consumer, TopicPartition, TopicPartition]:
    runner = Runner("anonymize", ServiceSettings.from_env({}), Handler(), ["gdx.raw.variants.v1"], [])
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    runner._assigned = {a, b}
    runner.consumer = consumer = Consumer(failures)
    return runner, consumer, a, b


def test_a_failed_commit_is_made_again_on_a_later_turn(monkeypatch):
    runner, consumer, a, b = make(failures=2)
    runner._commit({a: 5, b: 7})
    assert consumer.committed == {}
    runner._retry_commit()  # too soon: the broker gets a second's rest
    assert consumer.committed == {}
    monkeypatch.setattr(runner_module.time, "monotonic", lambda: runner._commit_retry_at + 0.1)
    runner._retry_commit()  # fails again, stays pending
    assert consumer.committed == {} and runner._uncommitted == {a: 5, b: 7}
    runner._commit_retry_at = 0.0
    runner._retry_commit()
    assert consumer.committed == {a: 5, b: 7}
    assert runner._uncommitted == {}


def test_a_partition_given_up_meanwhile_is_not_committed_again():
    runner, consumer, a, b = make(failures=1)
    runner._commit({a: 5, b: 7})
    runner._assigned = {b}  # a was revoked: its new owner resumes from the last commit
    runner._commit_retry_at = 0.0
    runner._retry_commit()
    assert consumer.committed == {b: 7}
    assert runner._uncommitted == {}


def test_a_later_commit_covers_what_failed():
    runner, consumer, a, b = make(failures=1)
    runner._commit({a: 5})
    runner._commit({a: 9})
    assert consumer.committed == {a: 9} and runner._uncommitted == {}
