"""A fork server for the kill -9 tests of :mod:`tl_universality.core.saving` (run as a script).

It imports torch, pandas and the package once, then for each ``trial <seed>`` line on stdin forks
a writer that saves the same folder again and again (save ``i`` holds ``i`` in every file, and the
renames sleep a little, to widen the swap window), kills it with SIGKILL at a random moment after
its first completed save, reaps it and prints ``killed <last completed save>``. The test process
then checks the folder. With ``fallback`` as the second argument, the writer cannot use
``renameat2`` and takes the rename-aside path.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time

import pandas as pd
import torch

from tl_universality.core import saving

N_VALUES = 1 << 20  # 8 MiB of float64: a save takes tens of milliseconds


def _slow_renames(rng: random.Random) -> None:
    replace = saving.os.replace

    def slow(a, b):
        time.sleep(rng.uniform(0, 0.004))
        replace(a, b)
        time.sleep(rng.uniform(0, 0.004))

    saving.os.replace = slow


def write_forever(folder: str, report: int) -> None:
    i = 0
    while True:
        i += 1
        with saving.save_folder(folder, "test.kill", 1, meta={"i": i}) as out:
            out.write_tensors(
                "arrays", {"x": torch.full((N_VALUES,), float(i), dtype=torch.float64)}
            )
            out.write_table("table", pd.DataFrame({"i": [i] * 100}))
            out.write_json("info", {"i": i})
            out.write_bytes("raw.bin", str(i).encode() * 1000)
        os.write(report, f"{i}\n".encode())


def main() -> None:
    folder, mode = sys.argv[1], sys.argv[2]
    for line in sys.stdin:
        seed = int(line.split()[1])
        rng = random.Random(seed)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer
            os.close(read)
            if mode == "fallback":
                saving._exchange = lambda a, b: False
            _slow_renames(rng)
            try:
                write_forever(folder, write)
            finally:
                os._exit(1)
        os.close(write)
        reader = os.fdopen(read)
        last = int(reader.readline())  # its first save is complete
        time.sleep(rng.uniform(0, 0.15))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for done in reader:  # saves completed before the kill
            last = int(done)
        reader.close()
        print(f"killed {last}", flush=True)


if __name__ == "__main__":
    main()
