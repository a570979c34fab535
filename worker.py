"""Start an RQ worker for security evaluations.

    REDIS_URL=redis://localhost:6379/0 APPDATA=appdata python worker.py [--burst]

torch is imported here so every forked work-horse starts warm, but CUDA is
never initialized in this parent process: each job picks its device itself.
"""

from __future__ import annotations

import argparse
import logging

from app.worker import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    parser.add_argument("--name", default=None, help="worker name (default: RQ's)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main(burst=args.burst, name=args.name))
