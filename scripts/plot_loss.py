"""Draw a loss-curve PNG from any dllogger JSON file (ours or NVIDIA's).

  python scripts/plot_loss.py results/dllogger.json [-o results/loss.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from loss_curve import plot_loss_curve


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json_summary", help="dllogger file (DLLL lines)")
    p.add_argument("-o", "--output", help="PNG path (default: next to the JSON file, *_loss.png)")
    args = p.parse_args(argv)
    out = args.output or str(Path(args.json_summary).with_suffix("")) + "_loss.png"
    print(plot_loss_curve(args.json_summary, out))


if __name__ == "__main__":
    main()
