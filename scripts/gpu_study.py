"""The study at GPU scale in one command: ``scripts/gpu_study.sh [--dry-run] [--only STAGES] [--out DIR]``.

Stages, in order (each one resumable, and skipped when it already finished with the same commands):

* ``data``: ``cad.synth`` with every core: the study's 30K training and 1K test programs;
* ``sft``: the baseline-size model (``configs/sft_gpu.yaml``) from scratch;
* ``sft-rag``: the retrieval-conditioned model (``configs/sft_gpu_rag.yaml``);
* ``dpo``: ``rl.pairs`` from the SFT model, then ``rl.dpo``;
* ``grpo``: ``rl.grpo`` from the SFT model (skipped, with a message, where the module is absent);
* ``eval``: the harness (``scripts/eval_all.sh``) on SFT + DPO, the conditioned model's rows, and
  beam 4 of the GRPO model scored by ``reward.evaluate``.

Everything goes under ``results/gpu-<date>/`` (``--out`` to continue another day's run). The
budget is 25 minutes of one H100, in stages of at most 9 minutes that can be started one after
another (``--only data``, then ``--only sft``, ...); a stage still running at ``--stage-limit``
minutes is stopped and resumes where it stopped when started again. Training steps are scaled to
each stage's minutes from the expected throughput (``--samples-per-s``, an H100's 430 samples/s at
baseline size in bf16); ``--dry-run`` prints the plan. ``--tiny`` runs the same stages with the
tiny CPU recipes in seconds (what the test does).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
H100_SAMPLES_PER_S = 430.0  # baseline size, bf16 (the study's T4: about 32)
SYNTH_PER_CORE_S = 9.0  # cad.synth samples per second per core (docs/results/bench_data.json: 18.4 on 2 cores)
RAG_SPEED = 0.75  # the conditioned model's throughput relative to the plain one (3 encoder blocks over 2 programs)


@dataclass
class Stage:
    name: str
    minutes: float  # budget on an H100
    commands: list[list[str]]
    what: str
    skip: str | None = None  # why the stage cannot run here


@dataclass
class Scale:
    """The sizes of one study: the H100 scale or the tiny CPU one."""

    train: int = 30_000
    test: int = 1_000
    image_px: int = 448
    sft_recipe: str = "configs/sft_gpu.yaml"
    rag_recipe: str = "configs/sft_gpu_rag.yaml"
    sft_extra: tuple = ()
    rag_extra: tuple = ()
    batch: int = 64
    fixed_steps: int | None = None  # SFT steps regardless of the budget (the tiny run)
    sft_overhead_min: float = 1.5  # loading and preparing 30K images, validation, sampling, saving
    pairs_images: int = 800
    pairs_k: int = 4
    pairs_extra: tuple = ()
    dpo_steps: int = 150
    dpo_extra: tuple = ()
    grpo_steps: int = 40
    grpo_extra: tuple = ()
    eval_limit: int = 100
    eval_extra: tuple = ()
    eval_only_study: str | None = None  # harness configurations (None: the whole plan)
    eval_only_rag: str | None = "beam4,plain-beam4,bestof6,rerank6-k2"
    max_new_tokens: tuple = ()
    minutes: dict = field(default_factory=lambda: {"data": 4, "sft": 6, "sft-rag": 5, "dpo": 3, "grpo": 2, "eval": 5})


TINY = Scale(
    train=16, test=4, image_px=128, sft_recipe="configs/sft_tiny.yaml", rag_recipe="configs/sft_tiny.yaml",
    sft_extra=("val_size=4", "eval_every=2", "sample_every=100", "sample_n=1", "save_every=2", "max_target_length=128",
               "log_every=1", "warmup_steps=1", "batch_size=8"),
    rag_extra=("retrieval_layers=1", "retrieval_k=1", "retrieval_pool=2", "max_retrieved_length=128"),
    batch=8, fixed_steps=3, pairs_images=3, pairs_k=2, pairs_extra=("--max-new-tokens", "24", "--batch-size", "2"),
    dpo_steps=2, dpo_extra=("batch_size=2", "logging_steps=1", "warmup_steps=0"),
    grpo_steps=1, grpo_extra=("num_generations=2", "batch_size=2", "max_new_tokens=16", "generation_chunk=1",
                              "logging_steps=1", "limit=2"),
    eval_limit=2, eval_extra=("--n", "2", "--k", "1", "--ns", "1,2", "--refine", "0", "--max-new-tokens", "16",
                              "--examples", "2"),
    eval_only_study="retrieval,beam4,bestof2,dpo-beam4", eval_only_rag="beam4,plain-beam4",
    max_new_tokens=("--max-new-tokens", "16"),
    minutes={"data": 0.02, "sft": 0.02, "sft-rag": 0.02, "dpo": 0.02, "grpo": 0.02, "eval": 0.02},
)


def sft_steps(minutes: float, overhead: float, samples_per_s: float, batch: int, speed: float = 1.0) -> int:
    """Optimiser steps that fill a stage's minutes at the expected throughput (at least 2)."""
    return max(int((minutes - overhead) * 60 * samples_per_s * speed / batch) // 10 * 10, 2)


def plan(out: Path, scale: Scale, samples_per_s: float, cores: int, launcher: list[str], reference: Path | None) -> list[Stage]:
    py = [sys.executable]
    data, m = out / "data", scale.minutes
    train, test = data / "train", data / "test"
    stages = [Stage("data", m["data"], [
        [*py, "-m", "cad.synth", "--n", str(scale.train), "--out", str(train), "--seed", "0", "--workers", str(cores),
         "--size", str(scale.image_px)],
        [*py, "-m", "cad.synth", "--n", str(scale.test), "--out", str(test), "--seed", "1", "--split", "test",
         "--workers", str(cores), "--size", str(scale.image_px)],
    ], f"{scale.train} training and {scale.test} test programs with {cores} workers "
       f"(about {(scale.train + scale.test) / (SYNTH_PER_CORE_S * cores) / 60:.1f} min at {SYNTH_PER_CORE_S:g}/s per core)")]
    steps = scale.fixed_steps or sft_steps(m["sft"], scale.sft_overhead_min, samples_per_s, scale.batch)
    rag_steps = scale.fixed_steps or sft_steps(m["sft-rag"], scale.sft_overhead_min, samples_per_s, scale.batch, RAG_SPEED)
    sft, rag = out / "sft", out / "sft-rag"
    for name, recipe, extra, n, folder, speed in (("sft", scale.sft_recipe, (), steps, sft, 1.0),
                                                   ("sft-rag", scale.rag_recipe, scale.rag_extra, rag_steps, rag, RAG_SPEED)):
        stages.append(Stage(name, m[name], [[*launcher, "-m", "sft", "--config", recipe, "--resume", f"train_data={train}",
                                               f"output_dir={folder}", f"max_steps={n}", *scale.sft_extra, *extra]],
                            f"{n} steps x {scale.batch} images ({n * scale.batch / max(scale.train, 1):.1f} epochs) at "
                            f"{samples_per_s * speed:.0f} samples/s"))
    pairs, dpo, grpo = out / "pairs", out / "dpo", out / "grpo"
    stages.append(Stage("dpo", m["dpo"], [
        [*py, "-m", "rl.pairs", "--model", str(sft / "final"), "--data", str(train), "--limit", str(scale.pairs_images),
         "--k", str(scale.pairs_k), "--margin", "1.0", "--include-reference", "--workers", str(cores), "--out", str(pairs),
         *scale.pairs_extra],
        [*py, "-m", "rl.dpo", "--config", "configs/dpo.yaml", "--resume", f"sft_model={sft / 'final'}",
         f"pairs={pairs / 'pairs'}", f"output_dir={dpo}", f"max_steps={scale.dpo_steps}", f"save_steps={scale.dpo_steps}",
         *scale.dpo_extra],
    ], f"pairs from {scale.pairs_images} training images x {scale.pairs_k} samples, then {scale.dpo_steps} DPO steps"))
    stages.append(Stage("grpo", m["grpo"], [
        [*py, "-m", "rl.grpo", "--config", "configs/grpo.yaml", f"sft_model={sft / 'final'}", f"data={train}",
         f"output_dir={grpo}", f"max_steps={scale.grpo_steps}", f"save_steps={scale.grpo_steps}", f"workers={cores}",
         *scale.grpo_extra],
    ], f"{scale.grpo_steps} GRPO steps from the SFT model",
        skip=None if find_spec("rl.grpo") else "rl.grpo is not in this checkout"))
    results = out / "results"
    test_sets = f"synth-test={test}" + (f",real={reference}" if reference else "")
    common = ["--retrieval-data", str(train), "--results", str(results), "--limit", str(scale.eval_limit),
              "--workers", str(cores), "--quiet", *scale.eval_extra]

    def harness(model: Path, run: str, only: str | None, dpo_model: Path | None = None) -> list[str]:
        args = [*common, "--run", run, *(["--only", only] if only else [])]
        return ["env", f"EVAL_ARGS={shlex.join(args)}", f"PYTHON={sys.executable}", "bash", "scripts/eval_all.sh",
                str(model), test_sets, *([str(dpo_model)] if dpo_model else [])]

    evals = [harness(sft / "final", "study", scale.eval_only_study, dpo / "final"),
             harness(rag / "final", "rag", scale.eval_only_rag)]
    if not stages[-1].skip:
        evals += [
            [*py, "-m", "decoding", "--model", str(grpo / "final"), "--data", str(test), "--limit", str(scale.eval_limit),
             "--strategy", "beam", "--out", str(results / "grpo-beam4.jsonl"), *scale.max_new_tokens],
            [*py, "-m", "reward.evaluate", "--pred", str(results / "grpo-beam4.jsonl"), "--gt", str(test), "--iou", "both",
             "--workers", str(cores), "--out", str(results / "grpo-beam4.eval.json")],
        ]
    stages.append(Stage("eval", m["eval"], evals,
                        f"harness on {scale.eval_limit} images per test set ({'synth-test, real' if reference else 'synth-test'}):"
                        " SFT + DPO (results/study), the conditioned model (results/rag), GRPO beam 4"))
    return stages


def print_plan(stages: list[Stage], out: Path, samples_per_s: float, limit: float) -> None:
    total = sum(s.minutes for s in stages if not s.skip)
    print(f"GPU study -> {out}  ({total:g} min budget on an H100 at {samples_per_s:g} samples/s; "
          f"each stage stops at {limit:g} min and resumes when started again)")
    for s in stages:
        state = "done" if done(out, s) else ("skip: " + s.skip if s.skip else "to run")
        print(f"\n[{s.name}] {s.minutes:g} min, {state}: {s.what}")
        for cmd in s.commands:
            print("  " + shlex.join(cmd))


def marker(out: Path, s: Stage) -> Path:
    return out / "stages" / f"{s.name}.json"


def done(out: Path, s: Stage) -> bool:
    """Finished before with the same commands (a changed plan runs the stage again; its commands resume)."""
    m = marker(out, s)
    return m.exists() and json.loads(m.read_text()).get("commands") == s.commands


def stop(proc: subprocess.Popen) -> None:
    """Interrupt a command's process group (it resumes next time); kill it if it does not stop in a minute."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_stage(out: Path, s: Stage, limit_min: float) -> int:
    """0 when the stage finished, 3 when it reached the time limit (rerun to resume), else the failing exit code."""
    t0 = time.perf_counter()
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for i, cmd in enumerate(s.commands):
        left = limit_min * 60 - (time.perf_counter() - t0)
        print(f"[{s.name}] $ {shlex.join(cmd)}", flush=True)
        with (log_dir / f"{s.name}-{i}.log").open("a") as log:
            # SIGINT back to its default in the child: a driver started in the background
            # (`cmd &`) inherits it ignored, and the stage could then not be interrupted to resume
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            try:
                rc = proc.wait(timeout=max(left, 1))
            except subprocess.TimeoutExpired:
                stop(proc)
                print(f"[{s.name}] stopped at the {limit_min:g}-minute limit; run the same command again to resume")
                return 3
            except BaseException:  # Ctrl-C or a kill of this driver stops the stage's command too
                stop(proc)
                raise
        if rc != 0:
            print(f"[{s.name}] failed (exit {rc}); see {log_dir / f'{s.name}-{i}.log'}", file=sys.stderr)
            return rc
    seconds = round(time.perf_counter() - t0, 1)
    marker(out, s).parent.mkdir(parents=True, exist_ok=True)
    marker(out, s).write_text(json.dumps({"commands": s.commands, "seconds": seconds,
                                          "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    print(f"[{s.name}] done in {seconds:.0f} s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu_study.sh", description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="run folder (default results/gpu-<today>)")
    ap.add_argument("--only", help="comma-separated stages to run (default: every stage not done yet)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--tiny", action="store_true", default=os.environ.get("GPU_STUDY_TINY") == "1",
                    help="the tiny CPU recipes (seconds a stage; for tests)")
    ap.add_argument("--samples-per-s", type=float, default=H100_SAMPLES_PER_S,
                    help="expected SFT throughput at baseline size, to scale steps to the stage minutes")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU workers (data, sandbox); default: all")
    ap.add_argument("--stage-limit", type=float, help="minutes after which a stage is stopped, to resume when started "
                    "again (default 9; 60 with --tiny, whose CPU stages are not on the H100 budget)")
    ap.add_argument("--accelerate-config", default="configs/accelerate/1gpu.yaml",
                    help="accelerate launch config of the SFT stages (configs/accelerate/ddp_8gpu.yaml for 8 GPUs)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill stops the running stage cleanly
    limit = args.stage_limit or (60.0 if args.tiny else 9.0)
    out = Path(args.out or f"results/gpu-{time.strftime('%Y%m%d')}")
    out = out if out.is_absolute() else ROOT / out
    scale = TINY if args.tiny else Scale()
    launcher = ([sys.executable] if args.tiny else  # accelerate's launcher, from the same environment
                [sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.accelerate_config])
    ref_dir = Path(os.environ.get("GENCAD_REFERENCE", ROOT.parent / "shared" / "gencad_reference"))
    reference = ref_dir / "samples.jsonl" if (ref_dir / "samples.jsonl").exists() and not args.tiny else None
    stages = plan(out, scale, args.samples_per_s, args.cores, launcher, reference)
    names = [s.name for s in stages]
    only = [x for x in (args.only or "").split(",") if x]
    unknown = sorted(set(only) - set(names))
    if unknown:
        print(f"error: --only {args.only}: unknown stage(s) {unknown}; stages: {','.join(names)}", file=sys.stderr)
        return 2
    print_plan(stages, out, args.samples_per_s, limit)
    if args.dry_run:
        return 0
    for s in stages:
        if only and s.name not in only:
            continue
        if s.skip:
            print(f"\n[{s.name}] skipped: {s.skip}")
            continue
        if done(out, s):
            print(f"\n[{s.name}] already done (delete {marker(out, s)} to run it again)")
            continue
        print(f"\n[{s.name}] {s.what}", flush=True)
        rc = run_stage(out, s, limit)
        if rc:
            return rc
    print(f"\nresults: {out / 'results'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
