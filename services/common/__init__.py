"""Shared runtime of the gdx services: settings, Avro wire format, topics, the runner, metrics, logs.

Nothing here imports a service; domain rules stay in their service.
"""
