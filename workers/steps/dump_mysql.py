"""Dump every configured MySQL/MariaDB database from one consistent snapshot."""

from __future__ import annotations

from dataclasses import replace

import pymysql

from workers.context import StepContext
from workers.errors import TargetError
from workers.steps.staging import expected_bytes, fresh_dir, with_paths
from workers.targets import mysql
from workers.targets.mysql import reader as mysql_reader


def dump_mysql(run: dict, ctx: StepContext) -> dict:
    settings = ctx.settings.mysql
    if run.get("databases"):  # a safety backup covers only the databases that still exist
        settings = replace(settings, databases=tuple(run["databases"]))
    ctx.progress.total = expected_bytes(ctx.tree, "mysql")
    out_dir = fresh_dir(ctx.tree.staging_dir(run["id"], "mysql"))
    try:
        result = mysql.dump(settings, out_dir, run["id"], ctx.codec, ctx.progress.add)
    # AttributeError: pymysql on a socket closed mid-read
    except (pymysql.err.Error, mysql_reader.Error, AttributeError) as exc:
        raise TargetError(
            "mysql",
            f"the server at {settings.host}:{settings.port} stopped answering during the dump "
            f"({type(exc).__name__}: {exc})",
        ) from None
    return {**result, "artifacts": with_paths(result["artifacts"])}
