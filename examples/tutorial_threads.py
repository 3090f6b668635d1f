"""Tutorial 2: plain (blocking) functions run in worker threads.

Run it: python examples/tutorial_threads.py
"""

from __future__ import annotations

import hashlib
import threading
import time

import anyio

import corral


def read_file(n: int) -> str:
    """A blocking call, like a file or socket read: it waits with the GIL released."""
    time.sleep(0.02)
    return f"{threading.get_ident()}: file-{n}"


def digest(data: bytes, *, algorithm: str = "sha256") -> str:
    return hashlib.new(algorithm, data).hexdigest()[:16]


async def main() -> None:
    # A plain function passed to map runs in threads (offload="thread" is the default).
    started = time.perf_counter()
    lines = await corral.map(read_file, range(40), limit=20)
    elapsed = time.perf_counter() - started
    threads = len({line.split(":")[0] for line in lines})
    print(f"map: 40 blocking reads of 20 ms on {threads} threads in {elapsed:.2f} s (serial 0.8 s)")

    # One blocking call: corral.to_thread takes keyword arguments too.
    print("to_thread:", await corral.to_thread(digest, b"corral", algorithm="md5"))


if __name__ == "__main__":
    anyio.run(main)
