"""``devflow serve``: the API on uvicorn and N embedded workers, in one event loop.

The bind rule: an address other than loopback is refused (``bind_refused``) while no
API token is live, since every route needs one. Loopback's names are always allowed
as Host; ``allow_hosts`` adds the names clients use (and a specific address bound is
allowed as itself). SIGTERM or SIGINT stops it gracefully: the listening socket is
closed, event streams end, requests under way finish (up to a few seconds), then the
workers stop as ``devflow worker`` does (their drives end at the next step; after the
grace period the attempts still going are recorded as interrupted and the leases
released).
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from devflow import logs
from devflow.api import web
from devflow.app import App
from devflow.errors import Code, DevflowError

log = logs.get_logger("devflow.serve")

#: seconds requests under way get to finish once the server is told to stop
REQUEST_GRACE = 5.0


@dataclass(frozen=True)
class Options:
    host: str = "127.0.0.1"
    port: int = 8765
    workers: int = 1
    allow_hosts: tuple[str, ...] = ()
    poll: float = 1.0
    grace: float = 30.0
    heartbeat: float = 15.0


def loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(app: App, host: str) -> None:
    if loopback(host) or app.tokens():
        return
    raise DevflowError(Code.BIND_REFUSED, f"serving on {host} needs an API token first: no "
                       "token is live, and the API answers no request without one",
                       hint="devflow tokens create --actor NAME --role admin; or serve on "
                            "127.0.0.1 behind a TLS reverse proxy")


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise DevflowError(Code.BIND_REFUSED, f"cannot listen on {host}:{port}: "
                           f"{exc.strerror or exc}", hint="choose another --port (0: any "
                           "free one) or --host") from exc
    sock.setblocking(False)
    return sock


class _Stopping:
    def __init__(self) -> None:
        self.set = False

    def __call__(self) -> bool:
        return self.set


def _hosts(options: Options) -> list[str]:
    named = [] if options.host in ("0.0.0.0", "::") else [options.host.strip("[]")]  # noqa: S104
    return [*web.LOOPBACK_NAMES, *options.allow_hosts, *named]


def _url(host: str, port: int) -> str:
    where = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{where}:{port}/api/v1"


def check(app: App, options: Options) -> dict[str, Any]:
    """What ``serve`` would do, checked (the bind rule, the database, the port), serving
    nothing."""
    check_bind(app, options.host)
    live = len(app.tokens())
    sock = _listen(options.host, options.port)
    try:
        port = sock.getsockname()[1]
    finally:
        sock.close()
    return {"url": _url(options.host, port), "workers": options.workers,
            "live_tokens": live, "hosts": _hosts(options)}


def serve(app: App, options: Options) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the signals are serve's (below): uvicorn would raise them again at exit

    check_bind(app, options.host)
    app.store  # noqa: B018 - opened (and checked migrated) before the first request
    app.context()  # the catalog and the backends, built once before requests race for them
    sock = _listen(options.host, options.port)
    port = sock.getsockname()[1]
    stopping = _Stopping()
    asgi = web.build(app, allow_hosts=_hosts(options),
                     heartbeat=options.heartbeat, stopping=stopping)
    server = Server(uvicorn.Config(asgi, log_config=None, access_log=False, lifespan="off",
                                   timeout_graceful_shutdown=int(REQUEST_GRACE),
                                   server_header=False))

    async def run() -> None:
        stop = anyio.Event()

        async def signals(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                task_status.started()
                async for signum in received:
                    log.info("serve_stopping", signal=signal.Signals(signum).name)
                    stopping.set = True
                    if server.should_exit:
                        server.force_exit = True
                    server.should_exit = True

        async with anyio.create_task_group() as outer:
            await outer.start(signals)
            async with anyio.create_task_group() as workers:
                for n in range(options.workers):
                    workers.start_soon(_work, app, options, n + 1, stop)
                workers.start_soon(app.deliver_async, stop)
                print(f"devflow: serving {_url(options.host, port)} with "
                      f"{options.workers} worker(s); stop with SIGTERM or Ctrl-C",
                      file=sys.stderr, flush=True)
                await server.serve(sockets=[sock])
                stopping.set = True
                stop.set()
            outer.cancel_scope.cancel()

    anyio.run(run)


async def _work(app: App, options: Options, n: int, stop: anyio.Event) -> Any:
    return await app.work_async(stop, name=f"serve-{n}", concurrency=1, poll=options.poll,
                                grace=options.grace)
