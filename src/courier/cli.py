"""The `courier` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from courier import __version__
from courier.config import load_settings


def _serve(args: argparse.Namespace) -> int:
    from courier.server import run

    try:
        settings = load_settings(
            config_file=args.config, host=args.host, port=args.port, data_dir=args.data_dir
        )
    except (ValueError, OSError) as exc:
        print(f"courier: {exc}", file=sys.stderr)
        return 2
    run(settings)
    return 0


def _cluster_up(args: argparse.Namespace) -> int:
    from courier.cluster.engines import EngineError
    from courier.cluster.local import up

    try:
        info = up(Path(args.dir), args.nodes, postgres=args.postgres)
    except EngineError as exc:
        print(f"courier: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info), flush=True)
    return 0


def _cluster_down(args: argparse.Namespace) -> int:
    from courier.cluster.local import down

    stopped = down(Path(args.dir))
    print(json.dumps({"stopped": stopped}), flush=True)
    return 0


def _shard(args: argparse.Namespace) -> int:
    import asyncio

    import asyncpg

    from courier.adapters import pg_shardmove

    try:
        settings = load_settings(config_file=args.config)
    except (ValueError, OSError) as exc:
        print(f"courier: {exc}", file=sys.stderr)
        return 2
    dsns = [d.strip() for d in settings.postgres_servers.split(",") if d.strip()]
    if not dsns:
        print("courier: setting postgres_servers is required", file=sys.stderr)
        return 2
    try:
        if args.action == "where":
            out = asyncio.run(pg_shardmove.where(dsns, args.user))
        else:
            report = asyncio.run(
                pg_shardmove.move_shard(
                    dsns, args.shard, args.to, grace=args.grace, drain=not args.no_drain
                )
            )
            out = report.as_dict()
    except (pg_shardmove.ShardMoveError, asyncpg.PostgresError, OSError) as exc:
        print(f"courier: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="courier", description="Courier messenger server.")
    parser.add_argument("--version", action="version", version=f"courier {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run a server on the embedded default (RocksDB under --data-dir)",
        description="Every option also reads COURIER_<NAME> from the environment "
        "(COURIER_PORT, COURIER_DATA_DIR, COURIER_SEND_RATE, ...) and [courier] in --config.",
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080; 0 = any)")
    serve.add_argument("--data-dir", help="where data lives (default ./courier-data)")
    serve.add_argument("--config", help="a TOML file of settings")
    serve.set_defaults(func=_serve)
    cluster = commands.add_parser(
        "cluster", help="a local cluster: NATS, PostgreSQL, Redis and N nodes on this machine"
    )
    actions = cluster.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="start it; prints the node URLs as JSON")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--postgres", type=int, default=2, help="PostgreSQL servers (default 2)")
    up.add_argument("--dir", required=True, help="where its data, logs and PIDs live")
    up.set_defaults(func=_cluster_up)
    down = actions.add_parser("down", help="stop exactly what `up` started in --dir")
    down.add_argument("--dir", required=True)
    down.set_defaults(func=_cluster_down)
    shard = commands.add_parser(
        "shard",
        help="logical shards of the PostgreSQL store (settings as for `serve`)",
        description="Reads postgres_servers like `courier serve` does (COURIER_POSTGRES_SERVERS "
        "or --config); prints JSON.",
    )
    shard_actions = shard.add_subparsers(dest="action", required=True)
    move = shard_actions.add_parser(
        "move", help="move a shard to another server while the cluster keeps serving"
    )
    move.add_argument("shard", type=int, help="logical shard, 0..999")
    move.add_argument("--to", type=int, required=True, help="server index in postgres_servers")
    move.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds between the map switch and deleting the old copy (default 10)",
    )
    move.add_argument("--no-drain", action="store_true", help="keep the old copy")
    move.add_argument("--config", help="a TOML file of settings")
    move.set_defaults(func=_shard)
    where = shard_actions.add_parser("where", help="the shard and server of a user")
    where.add_argument("user")
    where.add_argument("--config", help="a TOML file of settings")
    where.set_defaults(func=_shard)
    try:
        from courier.client.terminal import add_commands
    except ImportError:
        pass
    else:
        add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
