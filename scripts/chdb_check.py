"""Runs spanflow's current-release DDL and RowBinary on a current ClickHouse engine.

The tests' servers are Debian's 18.16; this checks the other dialect: chdb (ClickHouse
26.9 in-process, from PyPI's chdb-core) creates every table from the DDL spanflow
renders for current servers, loads the RowBinary spanflow encoded for them, and answers
each table's check query. Input: a manifest.json written by the test (tests/it/clickhouse.rs):
[{"table", "ddl", "insert", "file", "structure", "check"}]. Output: one line per table,
`<table>\t<TabSeparated row of the check query>`.

Usage: python scripts/chdb_check.py DIR
"""

import json
import os
import sys

from chdb import session


def main() -> None:
    work = sys.argv[1]
    with open(os.path.join(work, "manifest.json"), encoding="utf-8") as f:
        tables = json.load(f)
    s = session.Session(os.path.join(work, "chdb"))
    s.query("CREATE DATABASE IF NOT EXISTS spanflow")
    for t in tables:
        s.query(t["ddl"])
        path = os.path.join(work, t["file"])
        s.query(
            f"INSERT INTO spanflow.`{t['table']}` ({t['insert']}) "
            f"SELECT * FROM file('{path}', 'RowBinary', '{t['structure']}')"
        )
        row = str(s.query(t["check"] + " FORMAT TabSeparated")).rstrip("\n")
        print(f"{t['table']}\t{row}")


if __name__ == "__main__":
    main()
