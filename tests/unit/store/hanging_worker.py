"""A worker process whose handler announces the job, then hangs (killed by test_store_worker.py).

python hanging_worker.py <database-url> <worker-id> <marker-file>
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from teachloop.store import Database, Job, Worker


def main() -> None:
    url, worker_id, marker = sys.argv[1:4]

    def hang(job: Job) -> None:
        Path(marker).write_text(job.id)
        time.sleep(3600)

    worker = Worker(Database(url), {"slow": hang}, worker_id=worker_id, poll_interval=0.05, lease_seconds=2)
    worker.run_forever(threading.Event())


if __name__ == "__main__":
    main()
