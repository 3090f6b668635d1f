"""Quick start: double ten numbers, at most four at once.

Run it: python examples/quickstart.py
"""

import anyio

import corral


async def double(x: int) -> int:
    await anyio.sleep(0.01)  # stand-in for real I/O
    return 2 * x


async def main() -> None:
    print(await corral.map(double, range(10), limit=4))


if __name__ == "__main__":
    anyio.run(main)  # or anyio.run(main, backend="trio")
