"""Run the OCPP 1.6J/2.0.1 central system and the live control loop for a site."""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys

from nowblock.block.site import Site
from nowblock.control import add_serve_arguments, attach

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nowblock serve``."""
    parser.add_argument("--site", required=True, help="site file (TOML)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port (default 9000)")
    parser.add_argument("--db", default=None, help="the control loop's store: a SQLite file (default nowblock.sqlite) or a postgresql://user:pw@host/db "
                             "URL (needs the postgres extra); the schema is created and migrated on start")
    parser.add_argument("--certfile", default=None, help="TLS certificate (PEM): serve wss:// (security profile 2)")
    parser.add_argument("--keyfile", default=None, help="TLS private key (PEM)")
    parser.add_argument("--heartbeat", type=int, default=300, help="heartbeat interval told to chargers [s]")
    parser.add_argument("--tx-validity", type=int, default=900, help="validity of TxProfiles [s]")
    add_serve_arguments(parser)
    g = parser.add_argument_group("HTTP API (docs/api.md)")
    g.add_argument("--http-port", type=int, default=None,
                   help="serve the HTTP API on this port (off unless given; 0 picks a free port)")
    g.add_argument("--http-host", default="127.0.0.1", help="address of the HTTP API (default 127.0.0.1)")
    g.add_argument("--http-reads", choices=("local", "open", "token"), default="local",
                   help="who may read: local (default: clients on 127.0.0.1/::1 without a token), open, token")
    g.add_argument("--http-token-hash", action="append", default=[], metavar="sha256:HEX",
                   help="hash of an accepted write token (repeatable); also [api] token_hashes in the site "
                        "file, NOWBLOCK_API_TOKEN_HASHES and NOWBLOCK_API_TOKEN in the environment")


def ssl_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    """A server TLS context, or None without a certificate."""
    if not certfile:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # OCPP security profile 2 requires TLS 1.2+
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


async def _serve(args: argparse.Namespace) -> None:
    from nowblock.ocpp.server import CentralSystem

    import ocpp.messages

    site = Site.from_toml(args.site)
    if getattr(args, "base_load", None):
        # Checked as a scenario's base_load.csv before anything starts: the controller's own
        # reading takes a time without an offset as UTC, which moved the flats' evening peak an
        # hour late (two in summer) in the forecast it plans with.
        from nowblock.block.scenario import read_base_load_csv

        read_base_load_csv(args.base_load, site)
    # Schema validation on the event loop instead of a thread-pool hop per message: keeps the
    # handler tail short under load (docs/bench_ocpp.md). A process-wide switch of the ocpp
    # library, so it is flipped here, at the entry point, not in a constructor.
    ocpp.messages.ASYNC_VALIDATION = False
    cs = CentralSystem(site, host=args.host, port=args.port, ssl_context=ssl_context(args.certfile, args.keyfile),
                       heartbeat_s=args.heartbeat, tx_validity_s=args.tx_validity)
    # The controller restores persisted transactions before the first charger can connect.
    # The MILP solves in a worker process: a long solve must not slow the OCPP handlers.
    controller = attach(cs, db=args.db, args=args, solver_process=True)
    api = _api(controller, site, args)  # checks the tokens before any port opens
    controller.warm_up()  # before the port opens: a first start compiles for seconds
    await cs.start()
    await controller.start()
    n_cp = len(site.charge_points)
    print(f"nowblock: serving {site.name} ({n_cp} charging point{'s' * (n_cp != 1)}) on {cs.url('<id>')}",
          flush=True)
    stop = _stop_on_signals()
    try:
        if api is not None:
            await api.start(args.http_host, args.http_port)
            print(f"nowblock: HTTP API on http://{args.http_host}:{api.port}/api/state", flush=True)
        forever = asyncio.ensure_future(cs.serve_forever())
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({forever, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if forever.done():
            forever.result()  # serving ended by itself: an error, reported by run()
        forever.cancel()
    finally:
        n_open = len(getattr(cs, "_connections", {}))
        if api is not None:
            await api.stop()
        # The controller owns the store but must not close it yet: closing the connections
        # records each station's disconnect (connected = 0) in the store. So the loop stops
        # first (its last step is stored before the connections close), then the connections,
        # then the store.
        owns_store, controller.owns_store = getattr(controller, "owns_store", False), False
        try:
            await controller.stop()
            await cs.stop()
        finally:
            if owns_store and getattr(controller, "store", None) is not None:
                controller.store.close()
        why = getattr(stop, "signal_name", None)
        if why is not None:
            print(f"nowblock: stopped on {why}: {n_open} charger connection{'s' * (n_open != 1)} closed, "
                  f"store closed; goodbye", flush=True)


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (its ``signal_name`` says which), so ``serve`` can close
    its connections and its store before it exits, instead of dying mid-step."""
    import signal

    stop = asyncio.Event()
    stop.signal_name = None  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()

    def _on(sig: signal.Signals) -> None:
        stop.signal_name = sig.name  # type: ignore[attr-defined]
        log.info("%s received: closing the connections and the store", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, _on, sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            pass
    return stop


def _api(controller, site: Site, args: argparse.Namespace):
    """The HTTP API for ``controller`` when ``--http-port`` is given (else None)."""
    if getattr(args, "http_port", None) is None:
        return None
    from nowblock.api import BlockApi, TokenCheck, token_hashes

    tokens = TokenCheck([*token_hashes(site.extra), *args.http_token_hash], reads=args.http_reads)
    if not tokens.hashes:
        log.warning("HTTP API without a write token: every write is refused (see docs/api.md)")
    return BlockApi(controller, tokens=tokens)


def run(args: argparse.Namespace) -> int:
    """Run ``nowblock serve`` until interrupted; returns the exit code."""
    from nowblock.store import StoreFileError, StoreUnavailable

    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    except StoreFileError as exc:  # a --db that is no healthy nowblock database: bad input, one line
        print(f"nowblock serve: --db {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:  # a ConnectionError, but the database's, not a port's
        print(f"nowblock serve: --db {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # typically a port is taken (FileNotFoundError is bad input: main() says it)
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            raise
        if isinstance(exc, ssl.SSLError):
            print(f"nowblock serve: --certfile/--keyfile: cannot use them for TLS ({exc})", file=sys.stderr)
            return 2
        where = "" if "HTTP API" in str(exc) else f"cannot listen on {args.host}:{args.port}: "
        print(f"nowblock serve: {where}{exc}", file=sys.stderr)
        return 2
    return 0
