"""The exact-score sampler leaderboard: `scoresde bench samplers` (README, "Sampler benchmarks").

    python benchmarks/samplers.py [--quick] [--problem=mixture_2d] [--sdes=...] [--samplers=...] [--nfes=...]
                                  [--outdir=out/bench/samplers] [--seed=0]
"""

import sys

from scoresde import cli

if __name__ == "__main__":
    sys.argv[1:1] = ["bench", "samplers"]
    cli.main()
