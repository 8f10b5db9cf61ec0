"""Everything issue 12 measures about local saves and loads, in one run, then every target.

Run (as root, for the cold loads): .venv/bin/python benchmarks/save_costs.py [save_stall's options]
                                   [--load-gib 1] [--load-runs 3]

First benchmarks/save_stall.py (a ~1 GiB model + Adam state trained while it saves: the stall per
save of torchresume sync / async / async paced, DCP ``dcp.save`` / ``async_save`` and torch.save +
fsync; steps during a background write; the overhead of a save every 30 s over 5 minutes, paced
and not, beside the raw-write floor and the hypervisor's steal), then benchmarks/cold_load.py
(cold and warm loads of the same size of state against safetensors, torch.load and the disk's
O_DIRECT read). Object storage has its own command, benchmarks/s3_throughput.py.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cold_load
import save_stall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    save_stall.add_arguments(parser)
    parser.add_argument("--load-gib", type=float, default=1.0, help="state size for the loads (GiB)")
    parser.add_argument("--load-runs", type=int, default=3, help="cold + warm loads per method")
    args = parser.parse_args()
    print("== saving while training (benchmarks/save_stall.py)", flush=True)
    checks = save_stall.measure(args)
    print("\n== loading (benchmarks/cold_load.py)", flush=True)
    checks += cold_load.measure(argparse.Namespace(gib=args.load_gib, runs=args.load_runs, dir=args.dir))
    print("\n== every target of this run")
    save_stall.print_checks(checks)


if __name__ == "__main__":
    main()
