"""Train the render critic (``reward.critic``) on training images and their retrieved programs.

    python -m scripts.train_critic collect --data data/synth-critic --split train --index models/img2cad-small/index.npz \\
        --k 16 --out outputs/critic/train.npz [--shard 0/2]
    python -m scripts.train_critic fit --train outputs/critic/train.npz --val outputs/critic/val.npz \\
        --out outputs/critic [--epochs 8]

``collect``: for each image, its ``k`` nearest programs in the index (never its own row or a copy of
its program), executed in the sandbox and rendered in the input's style; per candidate the grey
``SIZE`` px render, the reranker's render terms and the true exact Best IoU against the image's
program. A test split is refused. ``--shard i/n`` collects every n-th image from the i-th (run
n of them side by side, then pass every file to ``fit``). ``fit``: the listwise loss on the
training file(s), the mean true IoU of each image's top-1 by the critic on the validation file
after each epoch, and the best epoch's weights (``critic.safetensors``) and metrics
(``critic-metrics.json``) in ``--out``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad.data import load_gencad, to_image  # noqa: E402
from cad.geometry import best_iou  # noqa: E402
from cad.render import Style, render_geometry  # noqa: E402
from cad.sandbox import ExecOptions, SandboxPool  # noqa: E402
from decoding.retrieval import RetrievalIndex  # noqa: E402
from reward.critic import FILE, SIZE, RenderCritic, grey, listwise_loss, save_critic  # noqa: E402
from reward.score import RENDER_TERMS, RenderTarget, compare_render  # noqa: E402
from decoding.rerank import DEFAULT_WEIGHTS  # noqa: E402
from scripts._common import write_json  # noqa: E402


DEFAULT_RENDER_WEIGHTS = {t: w for t, w in DEFAULT_WEIGHTS.items() if t in RENDER_TERMS and w}


def collect(rows, index: RetrievalIndex, k: int, pool: SandboxPool) -> dict[str, np.ndarray]:
    """Candidates of each row (see module docstring) as flat arrays; ``group`` numbers the row."""
    geo = ExecOptions(want_geometry=True)
    targets, renders, groups, ious, terms, ids = [], [], [], [], [], []
    for row in tqdm(rows, desc="collect", unit="img"):
        gt = pool.run(row["cadquery"], geo)
        if not gt.executable:
            continue
        image = to_image(row["image"]).convert("RGB")
        target = RenderTarget.of(image)
        idx, _ = index.search(index.embed([image]), k, index.exclusions([row["deepcad_id"]], [row["cadquery"]]))
        codes = [index.programs[j] for j in idx[0] if j >= 0]
        style = Style(size=target.pixels.shape[0])
        group = len(targets)
        for result in pool.run_many(codes, geo):
            if not result.executable:
                continue
            ours = render_geometry(result.geometry, style)
            t = compare_render(ours, target)
            renders.append(grey(ours))
            terms.append([t[name] for name in RENDER_TERMS])
            ious.append(best_iou(result.geometry, gt.geometry).iou)
            groups.append(group)
        targets.append(grey(target.pixels))
        ids.append(row["deepcad_id"])
    return {"targets": np.stack(targets), "renders": np.stack(renders), "group": np.asarray(groups, np.int32),
            "iou": np.asarray(ious, np.float32), "terms": np.asarray(terms, np.float32),
            "term_names": np.asarray(RENDER_TERMS), "ids": np.asarray(ids)}


def load_sets(paths: list[str]) -> dict[str, np.ndarray]:
    """Concatenate collected files, renumbering their groups."""
    parts = [dict(np.load(p)) for p in paths]
    out = {key: np.concatenate([p[key] for p in parts]) for key in ("targets", "renders", "iou", "terms", "ids")}
    offset, groups = 0, []
    for p in parts:
        groups.append(p["group"] + offset)
        offset += len(p["targets"])
    out["group"] = np.concatenate(groups)
    out["term_names"] = parts[0]["term_names"]
    return out


@torch.no_grad()
def predict(model: RenderCritic, data: dict, batch: int = 512) -> np.ndarray:
    model.eval()
    out = []
    for lo in range(0, len(data["renders"]), batch):
        g = torch.from_numpy(data["group"][lo:lo + batch]).long()
        out.append(model(torch.from_numpy(data["targets"])[g], torch.from_numpy(data["renders"][lo:lo + batch])))
    return torch.cat(out).numpy()


def top1_iou(scores: np.ndarray, data: dict) -> float:
    """Mean over images of the true IoU of the candidate with the highest score."""
    best = []
    for g in np.unique(data["group"]):
        m = np.flatnonzero(data["group"] == g)
        best.append(data["iou"][m[int(np.argmax(scores[m]))]])
    return float(np.mean(best))


def fit(train: dict, val: dict, epochs: int, lr: float, width: int, seed: int, images_per_step: int = 16) -> tuple[RenderCritic, list[dict]]:
    """Train with the listwise loss, ``images_per_step`` images (all their candidates) a step; keep the best
    validation epoch."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = RenderCritic(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    members = [np.flatnonzero(train["group"] == g) for g in range(len(train["targets"]))]
    members = [(g, m) for g, m in enumerate(members) if len(m) >= 2]
    images_per_step = min(images_per_step, len(members))
    steps = epochs * (len(members) // images_per_step)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    targets, renders = torch.from_numpy(train["targets"]), torch.from_numpy(train["renders"])
    iou = torch.from_numpy(train["iou"])
    history, best_state, best = [], None, -1.0
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(members))
        losses = []
        for lo in tqdm(range(0, len(order) - images_per_step + 1, images_per_step), desc=f"epoch {epoch + 1}", leave=False):
            chosen = [members[i] for i in order[lo:lo + images_per_step]]
            cand = np.concatenate([m for _, m in chosen])
            groups = torch.from_numpy(np.concatenate([np.full(len(m), j) for j, (_, m) in enumerate(chosen)]))
            tgt = targets[torch.from_numpy(np.concatenate([np.full(len(m), g) for g, m in chosen])).long()]
            c = renders[torch.from_numpy(cand).long()]
            if rng.random() < 0.5:  # the drawings mirrored together: the same comparison
                tgt, c = tgt.flip(-1), c.flip(-1)
            loss = listwise_loss(model(tgt, c), iou[torch.from_numpy(cand).long()], groups)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        val_top1 = top1_iou(predict(model, val), val)
        history.append({"epoch": epoch + 1, "train_loss": round(float(np.mean(losses)), 4), "val_top1_iou": round(val_top1, 4)})
        print(history[-1], flush=True)
        if val_top1 > best:
            best, best_state = val_top1, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), history


CRITIC_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # the critic's weight beside the decoding default's


def default_sum(data: dict) -> np.ndarray:
    """Each candidate's weighted sum of its render terms by the decoding default's weights."""
    names = [str(n) for n in data["term_names"]]
    return sum(w * data["terms"][:, names.index(n)] for n, w in DEFAULT_RENDER_WEIGHTS.items())


def with_default(critic: np.ndarray, data: dict) -> dict:
    """Top-1 true IoU of the decoding default's sum plus each weight of the critic's scores."""
    base = default_sum(data)
    return {str(w): round(top1_iou(base + w * critic, data), 4) for w in CRITIC_WEIGHTS}


def baselines(data: dict) -> dict:
    """Top-1 true IoU of each render term alone, of the decoding default's sum, and the oracle."""
    names = [str(n) for n in data["term_names"]]
    out = {name: round(top1_iou(data["terms"][:, i], data), 4) for i, name in enumerate(names)}
    out["rerank_default"] = round(top1_iou(default_sum(data), data), 4)
    out["oracle"] = round(float(np.mean([data["iou"][data["group"] == g].max() for g in np.unique(data["group"])])), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.train_critic", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--data", required=True)
    c.add_argument("--split", default=None)
    c.add_argument("--index", required=True)
    c.add_argument("--k", type=int, default=16)
    c.add_argument("--offset", type=int, default=0, help="skip the first rows (kept for end-to-end checks)")
    c.add_argument("--limit", type=int, default=None, help="rows read (the offset included)")
    c.add_argument("--shard", default="0/1", help="i/n: every n-th row from the i-th")
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--out", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--train", nargs="+", required=True)
    f.add_argument("--val", nargs="+", required=True)
    f.add_argument("--epochs", type=int, default=8)
    f.add_argument("--lr", type=float, default=2e-3)
    f.add_argument("--width", type=int, default=32)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "collect":
        i, n = (int(x) for x in args.shard.split("/"))
        rows = load_gencad(args.data, split=args.split, limit=args.limit, allow_test=False)
        rows = rows.select(range(args.offset + i, len(rows), n))
        t0 = time.perf_counter()
        with SandboxPool(args.workers) as pool:
            data = collect(rows, RetrievalIndex.load(args.index), args.k, pool)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.out, **data)
        print(f"{len(data['targets'])} images, {len(data['renders'])} candidates, {time.perf_counter() - t0:.0f} s -> {args.out}")
        return 0
    train, val = load_sets(args.train), load_sets(args.val)
    t0 = time.perf_counter()
    model, history = fit(train, val, args.epochs, args.lr, args.width, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_critic(model, out / FILE, {"width": args.width, "size": SIZE})
    write_json(out / "critic-metrics.json", {
        "benchmark": "render critic", "train": args.train, "val": args.val,
        "train_images": int(len(train["targets"])), "train_candidates": int(len(train["renders"])),
        "val_images": int(len(val["targets"])), "val_candidates": int(len(val["renders"])),
        "epochs": args.epochs, "lr": args.lr, "width": args.width, "seed": args.seed,
        "seconds": round(time.perf_counter() - t0, 1), "history": history,
        "val_top1_iou": {"critic": max(h["val_top1_iou"] for h in history), **baselines(val)},
        "val_top1_iou_default_plus_critic": with_default(predict(model, val), val),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
