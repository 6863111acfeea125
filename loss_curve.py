"""The loss-curve plot of a pretraining run, drawn from its dllogger file."""
from __future__ import annotations

import os
from pathlib import Path

from atomic_io import atomic_path
from run_log import read_dllogger


def plot_loss_curve(json_path: str | os.PathLike, png_path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw training loss (and evaluation points, when logged) from a dllogger file into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_x, train_y, eval_x, eval_y = [], [], [], []
    for rec in read_dllogger(json_path):
        data, step = rec.get("data", {}), rec.get("step")
        if not isinstance(step, list) or len(step) < 2:
            continue
        if "average_loss" in data:
            train_x.append(step[1])
            train_y.append(data["average_loss"])
        if "eval_mlm_accuracy" in data:
            eval_x.append(step[1])
            eval_y.append(data["eval_mlm_accuracy"])
    if not train_x:
        raise ValueError(f"{json_path}: no average_loss records to plot")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(train_x, train_y, label="training loss (MLM + NSP)", color="tab:blue")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if eval_x:
        ax2 = ax.twinx()
        ax2.plot(eval_x, eval_y, "o-", color="tab:orange", label="eval MLM accuracy")
        ax2.set_ylabel("MLM accuracy")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left" if eval_x else "best")
    ax.set_title(title or Path(json_path).name)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(png_path)
