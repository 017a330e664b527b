"""The client's memory for one large argument: peak RSS over the argument's size.

    python benchmarks/large_argument.py [MEGABYTES]     (default 500)

Runs ``map(len, [argument])`` on the local backend in a fresh process and prints the client's
peak RSS above what it had before the argument existed, as a multiple of the argument's size.
The argument itself counts once; the goal is a peak of at most about 2x.
"""
import os
import subprocess
import sys
import tempfile

CHILD = """
import resource, sys
sys.path.insert(0, {root!r})
import sheepdog_drmaa
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
argument = b"x" * ({megabytes} << 20)
assert sheepdog_drmaa.map(len, [argument], backend="local", store={store!r}, progress=False) == [len(argument)]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - before) / 1024, {megabytes})
"""


def main() -> None:
    megabytes = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as directory:
        code = CHILD.format(root=root, megabytes=megabytes, store=os.path.join(directory, "s.sqlite"))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=directory)
    grown, size = (float(v) for v in out.stdout.split())
    print(f"argument {size:.0f} MB: client peak grew by {grown:.0f} MB = {grown / size:.2f}x the argument "
          f"(target: at most about 2x)")


if __name__ == "__main__":
    main()
