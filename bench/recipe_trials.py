"""Recipe trials at a fixed wall-clock budget: which settings learn most in the same CPU time.

    python bench/recipe_trials.py NAME --task ivf [--minutes 16] [--threads 1]
                                  [--config configs/ivf.yaml] [--set KEY=VALUE ...]
                                  [--dev-fraction 0.15] [--dev-pairs 16] [--out trials.jsonl]

Trains the config (with `--set` overrides) in this process for `--minutes` of wall clock, with
the training setup and step of `adaray.train.train_loop_per_worker` (`build_components`,
`train_step`: same model, loss, AdamW, clipping; the data through a DataLoader, `loader_data`)
and its warm-up, but a cosine decay over the elapsed fraction of the budget instead of over
`max_steps`: settings whose steps cost more (bigger patches) get fewer of them, as they
would in a recipe of fixed length. Then scores the model with `adaray.train.validate`
(val_score, Qabf, VIF, SSIM, ...) and prints one JSON line (appended to `--out` when given).

It scores on *dev* pairs, not on the validation pairs the results page reports: the training
pairs whose split score (`adaray.data.pairs.split_score`) lies below val_fraction +
`--dev-fraction` (at most `--dev-pairs` of them, lowest score first) are held out of training
and scored, so that choosing a recipe by these trials never looks at the reported pairs.
Data: the shared tree (ADARAY_SHARED_DATA, else <repo>/../shared/data/fusion).

Run two trials at once with `--threads 1` each on a 2-core machine to compare them under the
same load; compare trials of one such run, not across runs (a shared machine is noisy). Trials
on one machine validate one at a time (a lock file in the temporary folder): a full-size pair
of 1 MP takes about 7 GB, and two at once can exhaust the memory.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from adaray import SOURCE_TREE, shipped_path
from adaray.checkpoint import save_model
from adaray.data.dataset import FusionPairDataset
from adaray.data.pairs import ImagePair, discover_pairs, split_pairs, split_score
from adaray.train import (
    build_components,
    load_train_config,
    loader_data,
    prepare_process,
    train_step,
    validate,
    warmup_cosine_factor,
)


def dev_split(pairs: list[ImagePair], val_fraction: float, dev_fraction: float,
              dev_pairs: int) -> tuple[list[ImagePair], list[ImagePair]]:
    """(train, dev): the training pairs of `split_pairs` with the dev pairs taken out."""
    train, _ = split_pairs(pairs, val_fraction)
    ranked = sorted((p for p in train if split_score(p) < val_fraction + dev_fraction),
                    key=split_score)
    dev = ranked[:dev_pairs]
    return [p for p in train if p not in dev], dev


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--task", required=True)
    parser.add_argument("--config", help="training config (default configs/<task>.yaml)")
    parser.add_argument("--minutes", type=float, default=16.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--dev-fraction", type=float, default=0.15,
                        help="split-score range above val_fraction held out as dev pairs")
    parser.add_argument("--dev-pairs", type=int, default=16, help="dev pairs scored, at most")
    parser.add_argument("--out", help="append the result line to this JSONL file")
    parser.add_argument("--save", help="write the trained model file here")
    args = parser.parse_args()

    data = os.environ.get("ADARAY_SHARED_DATA", SOURCE_TREE.parent / "shared" / "data" / "fusion")
    config = args.config or shipped_path("configs", f"{args.task}.yaml")
    cfg = load_train_config(config, [f"task={args.task}", *args.set])
    prepare_process(args.threads, cfg.seed)
    pairs = discover_pairs(data, cfg.task, a_dir=cfg.data.a_dir, b_dir=cfg.data.b_dir)
    train_pairs, dev_pairs = dev_split(pairs, cfg.data.val_fraction, args.dev_fraction,
                                       args.dev_pairs)
    train_set = FusionPairDataset(train_pairs, cfg.data.patch_size, train=True,
                                  cache=cfg.data.cache)
    dev_set = FusionPairDataset(dev_pairs, train=False, cache=cfg.data.cache)
    budget_s, step, losses = args.minutes * 60, 0, []
    started = time.perf_counter()
    parts = build_components(  # the lr follows the clock
        cfg, loader_data(cfg, datasets=(train_set, dev_set)),
        schedule=lambda index: warmup_cosine_factor(
            index, (time.perf_counter() - started) / budget_s, cfg.optim))
    model = parts.model
    while time.perf_counter() - started < budget_s:
        loss, _, _ = train_step(parts, cfg.optim.grad_clip)
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"{args.name}: step {step}, {(time.perf_counter() - started) / 60:.1f} min, "
                  f"loss {np.mean(losses[-50:]):.3f}", flush=True)
    with open(Path(tempfile.gettempdir()) / "adaray-recipe-trials.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        scores, _ = validate(model, dev_set, cfg.val)
    result = {"name": args.name, "task": cfg.task, "minutes": args.minutes,
              "threads": args.threads, "overrides": args.set, "steps": step,
              "dev_pairs": len(dev_set),
              "last_loss": round(float(np.mean(losses[-50:])), 4),
              **{key: round(value, 4) for key, value in scores.items()}}
    print(json.dumps(result), flush=True)
    if args.save:
        save_model(args.save, model, meta={"task": cfg.task, "trial": args.name, "steps": step})
    if args.out:
        with Path(args.out).open("a") as out:
            out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
