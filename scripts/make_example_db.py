"""Make studies.db.example: a real small study (packaged MiniLM on Rotten Tomatoes).

Never edit the file by hand: run ``python scripts/make_example_db.py`` (``make example-db``).
It runs ``hpo run`` on ``examples/example_db.yaml`` into a fresh SQLite file, then moves the
file into place, so a failed run never leaves a half-written example.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "examples" / "example_db.yaml"))
    parser.add_argument("--output", default=str(ROOT / "studies.db.example"))
    parser.add_argument("--n-trials", type=int, default=None)
    args = parser.parse_args()
    hpo = Path(sys.executable).with_name("hpo")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "example.db"
        command = [str(hpo), "run", "--config", args.config, "--storage", f"sqlite:///{db}"]
        if args.n_trials:
            command += ["--n-trials", str(args.n_trials)]
        subprocess.run(command, check=True, cwd=ROOT)
        # One self-contained file: fold the WAL back in and leave rollback-journal mode.
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("VACUUM")
        conn.close()
        shutil.move(db, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
