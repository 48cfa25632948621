"""Dense BPTT of sparsespike vs snnTorch / SpikingJelly / Norse, side by side (issue 2).

Usage: ``python benchmarks/bptt_vs_peers.py [--repeats 5] [--threads N]`` (same as
``sparsespike bench peers``); writes benchmarks/results/bptt_vs_peers.{json,md}.
Peers are optional: ``pip install -c constraints.txt -e ".[bench]"``.
"""

from sparsespike.bench.peers import main

if __name__ == "__main__":
    raise SystemExit(main())
