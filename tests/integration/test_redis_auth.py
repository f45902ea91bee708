"""Redis with a password for everyone and an ACL user for the processor's cache.

The processor's user may run the commands its cache uses on its own keys, nothing else; a
wrong password is named as a settings problem in the log, and lookups go on in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from f2pipe_devtools.servers import RedisServer
from f2pipe_devtools.servers.redis import processor_acl
from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_processor.registry import Location, TemplateRow
from f2pipe_processor.resolver import RedisCache
from f2pipe_shared.topics import parse_topic
from tests.conftest import running

PREFIX = "f2pipe:processor:"
SECRET = secrets.token_hex(16)


@pytest.fixture(scope="module")
def acl_redis(servers_dir: Path) -> Iterator[RedisServer]:
    users = {"processor": processor_acl(SECRET, PREFIX)}
    yield from running(lambda: RedisServer(servers_dir / "redis-acl", users=users))


def plain_url(server: RedisServer) -> str:
    return f"redis://{server.host}:{server.port}/0"


def cache(server: RedisServer, **credentials: str) -> RedisCache:
    return RedisCache(
        plain_url(server), PREFIX, 60, retry_seconds=30.0,
        metrics=ProcessorMetrics(), credentials=credentials,
    )  # fmt: skip


def test_no_password_no_redis(acl_redis: RedisServer) -> None:
    with pytest.raises((AuthenticationError, ResponseError), match=r"(?i)auth"):
        redis.Redis.from_url(plain_url(acl_redis)).get("x")


def test_the_processor_user_runs_every_command_of_the_cache(acl_redis: RedisServer) -> None:
    topic = parse_topic("tele/f2-0a1b2c3d4e5f/sensor-mode/J3/sensor-1")
    row: TemplateRow = (7, "t", None, False, [])

    async def scenario() -> None:
        c = cache(acl_redis, username="processor", password=SECRET)
        try:
            await c.put_locations({topic: Location(1, 7, 2, 3)})
            assert await c.get_locations([topic]) == {topic.format(): Location(1, 7, 2, 3)}
            await c.put_templates({7: row})
            assert await c.get_templates([7]) == {7: list(row)}  # type: ignore[comparison-overlap]
            await c.delete(macs=[topic.mac], template_ids=[7])
            assert await c.get_templates([7]) == {}
            await c.put_templates({7: row})
            await c.flush()
            assert await c.get_templates([7]) == {}
            assert c.up
            assert c.last_error is None
        finally:
            await c.close()

    asyncio.run(scenario())


def test_the_processor_user_may_do_nothing_else(acl_redis: RedisServer) -> None:
    client = redis.Redis.from_url(plain_url(acl_redis), username="processor", password=SECRET)
    with pytest.raises(NoPermissionError):
        client.set("someone-else:key", b"x")  # outside its prefix
    with pytest.raises(NoPermissionError):
        client.flushall()
    with pytest.raises(NoPermissionError):
        client.config_get("requirepass")
    with pytest.raises(NoPermissionError):
        client.keys("*")


def test_a_wrong_password_is_named_and_lookups_fall_back(
    acl_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    topic = parse_topic("tele/f2-0a1b2c3d4e5f/sensor-mode/J3/sensor-1")

    async def scenario() -> None:
        c = cache(acl_redis, username="processor", password=wrong)
        try:
            assert await c.get_locations([topic]) is None  # the caller asks PostgreSQL
            assert not c.up
        finally:
            await c.close()

    with caplog.at_level(logging.WARNING, logger="f2pipe_processor.resolver"):
        asyncio.run(scenario())
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "REDIS_USERNAME/REDIS_PASSWORD" in errors[0].getMessage()
    assert wrong not in caplog.text


def test_the_compose_redis_command_lets_in_the_processor_only(tmp_path: Path) -> None:
    """docker-compose.yml's Redis command, run here with a local redis-server: the
    processor's user works with the cache, `default` is off, the rules match the harness's."""
    import shutil
    import subprocess

    import yaml  # type: ignore[import-untyped]

    from f2pipe_devtools.servers.base import free_port, port_open
    from f2pipe_devtools.servers.redis import PROCESSOR_COMMANDS

    compose = yaml.safe_load((Path(__file__).parents[2] / "docker-compose.yml").read_text())
    script = compose["services"]["redis"]["command"][2].replace("$$", "$")
    assert f"'{PROCESSOR_COMMANDS}'" in script  # the same rules as the harness and dev stack
    port = free_port()
    script = script.replace("/tmp/users.acl", str(tmp_path / "users.acl"))
    script += f" --port {port} --bind 127.0.0.1 --dir {tmp_path}"
    binary = shutil.which("redis-server")
    assert binary is not None
    env = {"PATH": str(Path(binary).parent) + ":/usr/bin:/bin", "REDIS_PASSWORD": SECRET,
           "PROCESSOR_REDIS_PREFIX": PREFIX}  # fmt: skip
    proc = subprocess.Popen(["sh", "-euc", script], env=env, stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if port_open("127.0.0.1", port):
                break
            time.sleep(0.05)
        assert (tmp_path / "users.acl").stat().st_mode & 0o777 == 0o600
        server = RedisServer.__new__(RedisServer)
        server.host, server.port = "127.0.0.1", port
        test_the_processor_user_runs_every_command_of_the_cache(server)
        with pytest.raises((AuthenticationError, ResponseError)):
            redis.Redis(host="127.0.0.1", port=port).ping()
        with pytest.raises(AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, password=SECRET).ping()  # as default
    finally:
        proc.terminate()
        proc.wait(10)
