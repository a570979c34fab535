"""Shared resources of the API process, set up once in ``init_app`` and fetched through getters."""

from __future__ import annotations

import redis
from flask import Flask, current_app
from rq import Queue

from . import queue as jobqueue
from .config import Config
from .records import Records
from .storage import Storage

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def connect(settings: Config, socket_timeout: float | None = 10) -> redis.Redis:
    """A Redis client with short timeouts, so an outage turns into a quick 503.

    The worker passes ``socket_timeout=None``: RQ blocks on BLPOP for minutes.
    """
    return redis.Redis.from_url(
        settings.redis_url or DEFAULT_REDIS_URL,
        socket_connect_timeout=2,
        socket_timeout=socket_timeout,
        health_check_interval=15,
        retry_on_timeout=False,
    )


def init_app(app: Flask) -> None:
    settings: Config = app.config["SERVICE"]
    connection = connect(settings)
    storage = Storage(settings.appdata)
    storage.ensure()
    app.extensions["secev"] = {
        "redis": connection,
        "records": Records(connection, settings.key_prefix),
        "storage": storage,
        "queue": jobqueue.get_queue(connection, settings.queue_name),
    }


def _get(name: str):
    return current_app.extensions["secev"][name]


def get_settings() -> Config:
    return current_app.config["SERVICE"]


def get_redis() -> redis.Redis:
    return _get("redis")


def get_records() -> Records:
    return _get("records")


def get_storage() -> Storage:
    return _get("storage")


def get_queue() -> Queue:
    return _get("queue")
