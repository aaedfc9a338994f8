"""W8's footprint as the broadcast array grows, for each start method: how much of it is a fixed cost.

    python benchmarks/broadcast_sizes.py [--sizes 256,1024] [--methods forkserver,spawn,fork]

Each (size, start method) runs in a fresh process: a ``manycore.shared_array`` of SIZE MiB, filled in small
slices, broadcast to a pool of 2 workers and summed in 100 slices, as in W8. The footprint (PSS of the process
tree, shared memory counted once; see footprint.py) is taken while the pool is alive and printed with its ratio
to the array. Per-process overhead is a constant, so the ratio falls as the array grows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1024 * 1024
TAG = "@@broadcast-size@@ "


def child(size_mib: int, method: str) -> None:
    import manycore
    from footprint import footprint_bytes, process_tree, shm_files

    from workloads import ManycoreSharedRunner, slice_bounds, sum_slice

    shm_before = shm_files().keys()
    n = size_mib * MIB // 8
    array = ManycoreSharedRunner().make_array(n)  # W8's own fill, in small slices
    with manycore.Pool(2, start_method=method) as pool:
        handle = pool.broadcast(array)
        total = sum(pool.starmap(sum_slice, [(handle, a, b) for a, b in slice_bounds(n)]))
        footprint = footprint_bytes(process_tree(os.getpid()), shm_before)
    if total != float(array.sum()):
        raise AssertionError("wrong slice sums")
    print(TAG + json.dumps({"footprint_mib": footprint / MIB}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1024", help="array sizes in MiB, comma-separated")
    parser.add_argument("--methods", default="forkserver,spawn,fork")
    args = parser.parse_args()
    print(f"command: python {' '.join(sys.argv)}\n")
    print("| array MiB | start method | footprint MiB | / array |")
    print("|---|---|---|---|")
    for size in map(int, args.sizes.split(",")):
        for method in args.methods.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(size), method],
                capture_output=True,
                text=True,
                check=True,
                cwd=HERE,
            ).stdout
            line = next(x for x in out.splitlines() if x.startswith(TAG))
            footprint = json.loads(line[len(TAG) :])["footprint_mib"]
            print(f"| {size} | {method} | {footprint:.0f} | {footprint / size:.3f} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.path.insert(0, HERE)
        child(int(sys.argv[2]), sys.argv[3])
    else:
        main()
