"""A real Apache Kafka broker (KRaft, combined broker and controller) run from Maven Central jars.

Used by `make run`, the test suite and the resilience tests; not by the services themselves.
"""
