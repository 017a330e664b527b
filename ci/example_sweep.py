"""An example sweep: the sum of two numbers over a small grid, on the cluster."""
import logging

import sheepdog_drmaa


def add(a: int, b: int) -> int:
    return a + b


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    grid = [(a, b) for a in range(4) for b in range(3)]
    results = sheepdog_drmaa.map(add, grid, backend="drmaa", name=None)
    for (a, b), total in zip(grid, results):
        print(f"add({a}, {b}) = {total}")
    assert results == [a + b for a, b in grid]
    print(f"{len(results)} results, in input order, from Grid Engine")
