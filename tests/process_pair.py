"""Two processes that stay up and run ``vitdense`` commands as the ranks of one DDP run (gloo, on the CPU).

Started afresh, a two-process command costs ~16 s on an idle machine before its first step: Lightning starts
rank 1 only once rank 0 has imported the kit and parsed the command, and rank 1 then imports it again. These
two processes import it once and run each command in ~2 s. They are started as torchrun or a cluster's
scheduler starts a job's processes (``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``NODE_RANK`` and
``LOCAL_RANK`` set), which Lightning supports as processes created externally; the tests that need
Lightning's own start of rank 1 still run their command afresh (tests/test_distributed.py).

Run as a script, this file is one of the two processes: it reads one JSON request per line from stdin (the
command's arguments, its working folder, where each rank writes its result) and runs it in this process.
"""

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any


class ProcessPair:
    """The two processes, started at the first :meth:`run` and again after one that failed to finish.

    Args:
        folder: where the processes' logs and the results go.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._processes: list[subprocess.Popen] = []
        self._requests = 0

    def run(self, arguments: list[str], cwd: Path, timeout: float = 300) -> list[dict[str, Any]]:
        """``vitdense <arguments>`` on both ranks in ``cwd``; each rank's ``{"code": exit code, "stdout": what
        it printed}``.

        Raises:
            AssertionError: a rank stopped or the command ran past ``timeout`` seconds (a rank that failed
                leaves the other waiting in a collective); both processes' logs are in the message.
        """
        if not self._processes:
            self._start()
        self._requests += 1
        results = [self.folder / f"result_{self._requests}.rank{rank}.json" for rank in range(2)]
        request = {"arguments": arguments, "cwd": str(cwd), "results": [str(path) for path in results]}
        for process in self._processes:
            with contextlib.suppress(OSError):  # a process that stopped since: reported below, with its log
                process.stdin.write(json.dumps(request) + "\n")
                process.stdin.flush()
        deadline = time.monotonic() + timeout
        while not all(path.exists() for path in results):
            stopped = any(process.poll() is not None for process in self._processes)
            if stopped or time.monotonic() > deadline:
                self.close()
                what = "stopped" if stopped else "hung"
                raise AssertionError(f"the process pair {what} on {arguments}\n{self._logs()}")
            time.sleep(0.05)
        return [json.loads(path.read_text()) for path in results]

    def _start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        for rank in range(2):
            environment = {
                **os.environ,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "WORLD_SIZE": "2",
                "NODE_RANK": "0",
                "LOCAL_RANK": str(rank),
                "OMP_NUM_THREADS": "1",
            }
            with open(self.folder / f"rank{rank}.log", "a") as log:
                process = subprocess.Popen(
                    [sys.executable, __file__],
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=environment,
                )
            self._processes.append(process)

    def _logs(self) -> str:
        logs = [(self.folder / f"rank{rank}.log").read_text()[-3000:] for rank in range(2)]
        return "\n".join(f"--- rank {rank}'s log (its end):\n{log}" for rank, log in enumerate(logs))

    def close(self) -> None:
        """Stop both processes (they end when their stdin closes; killed if they do not within 10 s)."""
        for process in self._processes:
            with contextlib.suppress(OSError):
                process.stdin.close()
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes = []


def _serve() -> None:
    from vitdense.cli import main

    rank = int(os.environ["LOCAL_RANK"])
    for line in sys.stdin:
        request = json.loads(line)
        os.chdir(request["cwd"])
        printed = io.StringIO()
        code: int | str = 0
        try:
            with contextlib.redirect_stdout(printed):
                main(request["arguments"])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except Exception:  # reported to the test, which fails on it
            code = traceback.format_exc()
            print(code, file=sys.stderr, flush=True)
        path = Path(request["results"][rank])
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps({"code": code, "stdout": printed.getvalue()}))
        partial.replace(path)  # whole, or the test does not see it yet


if __name__ == "__main__":
    _serve()
