"""Speed and memory of the whole BIG-MoE model against the bare CLIP tower on the same 589 tokens.

    python benchmarks/bench_model.py                     # reference size (ViT-B/16, 224 px), 2 threads, ~6 min
    python benchmarks/bench_model.py --only lasoftmoe    # only the La-SoftMoE line
    python benchmarks/bench_model.py --quick             # smoke run at tiny size (seconds)

Two models, both with random weights, built from :class:`BigMoeConfig`:

* ``bigmoe``: the reference configuration (every spec default: IGMA in layers 0-10, CPB in 0-9, prompt generator).
* ``clip``: ``BigMoeConfig(adapter_layers=[])``, which builds no IGMA, no CPB and no prompt generator: the same
  CLIP ViT-B/16 layers on the same early-fusion stream (CLS + 3 x 196 patch tokens from the same patch
  convolution, same position table), CLIP's post-LN and the same Linear(768, 2) head. Its trainable set is the
  model's own minus the adapters: the last block, post-LN, CLS/position/modality embeddings and the head, so that
  in both models the backward runs through all 12 blocks (the position table needs it).

Measured, interleaved (``for rep: for case: time``), median of ``--repeats`` after ``--warmup`` calls, with
``torch.set_num_threads(--threads)``:

* eval forward (``model.eval()``, ``torch.inference_mode()``) at batch 1 and 4;
* train step at batch 2: ``model.train()`` (modality dropout on), forward with labels, backward, AdamW step,
  ``zero_grad``; backbone frozen except the last block (the config default);
* bf16 inference of ``bigmoe`` at batch 4: the model cast with ``.to(torch.bfloat16)`` and bf16 inputs, and fp32
  weights under ``torch.autocast("cpu", dtype=torch.bfloat16)``; with the largest |logit| difference to fp32.

The La-SoftMoE line (RGB only, 197 tokens): ``lasoftmoe`` = ``hub_configs_lasoftmoe.clip_vit_base_patch16_config()``
(a Soft MoE of 4 experts x 49 slots beside the MLP of each of the 12 image blocks), ``la_clip`` = the same config
with ``moe_layers=[]``, which wraps no layer: the same CLIP ViT-B/16 tower, projection and prompt logits, no Soft
MoE. Both with random weights; eval forward (``inference_mode``) at batch 1 and 4, RGB only; the frozen text
tower's prompt embeddings are cached by the model after the warm-up, so the timed calls are the image path.

Both wall time and process CPU time (all threads) are reported; on a machine shared with other jobs the CPU time
is the steadier of the two. Peak memory: each case runs once in a child process (``--child CASE``, same script)
that reports ``ru_maxrss`` after building the model (``rss_built``) and after the measured call (``peak``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_bigmoe import BigMoeConfig, BigMoeForFaceAntiSpoofing
from modeling_bigmoe.configuration_lasoftmoe import LaSoftMoeConfig
from modeling_bigmoe.hub_configs_lasoftmoe import clip_vit_base_patch16_config
from modeling_bigmoe.hub_configs_lasoftmoe import tiny_config as lasoftmoe_tiny_config
from modeling_bigmoe.modeling_lasoftmoe import LaSoftMoeForFaceAntiSpoofing

MODALITY_ARGS = ("pixel_values", "depth_pixel_values", "ir_pixel_values")
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
               "image_size": 32, "patch_size": 8}
TINY_MOE = {"moe_num_experts": 16, "moe_bottleneck_dim": 4, "moe_key_dim": 4, "cpb_prompt_dim": 8}
# (case name, model, kind, batch); kinds: eval | train | bf16 (model cast) | autocast (fp32 weights)
CASES = (
    ("bigmoe/eval/b1", "bigmoe", "eval", 1),
    ("clip/eval/b1", "clip", "eval", 1),
    ("bigmoe/eval/b4", "bigmoe", "eval", 4),
    ("clip/eval/b4", "clip", "eval", 4),
    ("bigmoe/train/b2", "bigmoe", "train", 2),
    ("clip/train/b2", "clip", "train", 2),
    ("bigmoe/bf16/b4", "bigmoe", "bf16", 4),
    ("bigmoe/autocast/b4", "bigmoe", "autocast", 4),
    ("lasoftmoe/eval/b1", "lasoftmoe", "eval", 1),
    ("la_clip/eval/b1", "la_clip", "eval", 1),
    ("lasoftmoe/eval/b4", "lasoftmoe", "eval", 4),
    ("la_clip/eval/b4", "la_clip", "eval", 4),
)
# model -> the group ``--only`` selects, the modality inputs it gets, and (numerator, denominator) ratio pairs
GROUPS = {"bigmoe": "bigmoe", "clip": "bigmoe", "lasoftmoe": "lasoftmoe", "la_clip": "lasoftmoe"}
MODEL_INPUTS = {"bigmoe": MODALITY_ARGS, "clip": MODALITY_ARGS, "lasoftmoe": ("pixel_values",),
                "la_clip": ("pixel_values",)}
RATIO_PAIRS = (("bigmoe", "clip"), ("lasoftmoe", "la_clip"))


def select_cases(only: str = "all") -> tuple:
    """The cases of group ``only`` ("all", "bigmoe" or "lasoftmoe")."""
    if only == "all":
        return CASES
    if only not in set(GROUPS.values()):
        raise ValueError(f"select_cases: only must be 'all', 'bigmoe' or 'lasoftmoe', got {only!r}")
    return tuple(c for c in CASES if GROUPS[c[1]] == only)


def build_config(name: str, quick: bool) -> BigMoeConfig | LaSoftMoeConfig:
    """``bigmoe`` = reference config, ``clip`` = the same with ``adapter_layers=[]``; ``lasoftmoe`` = the reference
    La-SoftMoE CLIP ViT-B/16 config, ``la_clip`` = the same with ``moe_layers=[]``; tiny sizes with ``quick``."""
    if name in ("lasoftmoe", "la_clip"):
        kwargs = {"moe_layers": []} if name == "la_clip" else {}
        return lasoftmoe_tiny_config(**kwargs) if quick else clip_vit_base_patch16_config(**kwargs)
    kwargs = dict(vision_config=dict(TINY_VISION), **TINY_MOE) if quick else {}
    if name == "clip":
        kwargs["adapter_layers"] = []
    elif name != "bigmoe":
        raise ValueError(f"build_config: name must be 'bigmoe', 'clip', 'lasoftmoe' or 'la_clip', got {name!r}")
    return BigMoeConfig(**kwargs)


def build_model(name: str, quick: bool):
    """The model of ``name`` (see :func:`build_config`) with random weights."""
    config = build_config(name, quick)
    if isinstance(config, LaSoftMoeConfig):
        return LaSoftMoeForFaceAntiSpoofing(config)
    return BigMoeForFaceAntiSpoofing(config)


def make_inputs(config, batch: int, seed: int, dtype=torch.float32, names=MODALITY_ARGS) -> dict:
    """Random (batch, 3, H, W) modalities, one per name in ``names`` (default all three)."""
    vc = config.vision_config
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(batch, vc.num_channels, vc.image_size, vc.image_size, generator=g).to(dtype)
            for name in names}


class Bench:
    """The models, optimizers and inputs of every case, and one timed call per case."""

    def __init__(self, quick: bool, cases=CASES, seed: int = 0):
        self.quick = quick
        self.cases = {c[0]: c for c in cases}
        torch.manual_seed(seed)
        names = sorted({c[1] for c in cases})
        self.models = {name: build_model(name, quick) for name in names}
        self.optimizers = {
            name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
            for name, model in self.models.items() if any(c[1] == name and c[2] == "train" for c in cases)}
        self.bf16 = None
        if any(c[2] == "bf16" for c in cases):
            self.bf16 = copy.deepcopy(self.models["bigmoe"]).to(torch.bfloat16).eval()
        self.inputs = {}
        for case, name, kind, batch in cases:
            config = self.models[name].config
            dtype = torch.bfloat16 if kind == "bf16" else torch.float32
            self.inputs[case] = make_inputs(config, batch, seed=batch, dtype=dtype, names=MODEL_INPUTS[name])
            if kind == "train":
                self.inputs[case]["labels"] = torch.arange(batch) % 2

    def logit_differences(self) -> dict:
        """Largest |logit - fp32 logit| of the bf16 cast model and of autocast, on the batch-4 inputs
        (BIG-MoE; empty when it is not among the cases)."""
        if "bigmoe" not in self.models:
            return {}
        model = self.models["bigmoe"].eval()
        x = {k: v.float() for k, v in self.inputs.get("bigmoe/bf16/b4", self.inputs.get("bigmoe/eval/b4")).items()}
        with torch.inference_mode():
            ref = model(**x).logits
            out = {"fp32_logit_absmax": ref.abs().max().item()}
            if self.bf16 is not None:
                cast = self.bf16(**{k: v.to(torch.bfloat16) for k, v in x.items()}).logits.float()
                out["bf16_max_abs_diff"] = (cast - ref).abs().max().item()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                auto = model(**x).logits.float()
            out["autocast_max_abs_diff"] = (auto - ref).abs().max().item()
        return out

    def run(self, case: str) -> None:
        """One call of ``case`` (untimed)."""
        _, name, kind, _ = self.cases[case]
        inputs = self.inputs[case]
        if kind == "train":
            model, optimizer = self.models[name].train(), self.optimizers[name]
            loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return
        model = self.bf16 if kind == "bf16" else self.models[name].eval()
        with torch.inference_mode():
            if kind == "autocast":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    model(**inputs)
            else:
                model(**inputs)

    def time(self, case: str) -> tuple[float, float]:
        """(wall, process CPU) seconds of one call."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.run(case)
        return time.perf_counter() - wall, time.process_time() - cpu


def measure(bench: Bench, repeats: int, warmup: int) -> dict:
    """Interleaved timing: ``for rep: for case: time``; returns ``{case: {"wall": [...], "cpu": [...]}}``."""
    for _ in range(warmup):
        for case in bench.cases:
            bench.run(case)
    times = {case: {"wall": [], "cpu": []} for case in bench.cases}
    for _ in range(repeats):
        for case in bench.cases:
            wall, cpu = bench.time(case)
            times[case]["wall"].append(wall)
            times[case]["cpu"].append(cpu)
    return times


def child_main(case: str, quick: bool) -> dict:
    """Build the model of ``case``, run it twice, return ``ru_maxrss`` (MiB) after the build and at the end."""
    chosen = [c for c in CASES if c[0] == case]
    if not chosen:
        raise ValueError(f"--child: unknown case {case!r}; known: {[c[0] for c in CASES]}")
    bench = Bench(quick, cases=chosen)
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bench.run(case)
    bench.run(case)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": case, "rss_built_mib": round(built, 1), "peak_mib": round(peak, 1)}


def memory_in_children(quick: bool, threads: int, cases=CASES) -> dict:
    """Run every case once in its own child process; ``{case: child_main(...)}``."""
    result = {}
    for case, *_ in cases:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", case, "--threads", str(threads)]
        cmd += ["--quick"] if quick else []
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"child {case} failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
        result[case] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def summarize(times: dict) -> dict:
    """Medians per case and the ratios model / bare tower (BIG-MoE / CLIP: eval b1/b4, train b2; La-SoftMoE /
    CLIP without Soft MoE: eval b1/b4) and fp32 / bf16 (speed-up)."""
    med = {case: {k: statistics.median(v) for k, v in t.items()} for case, t in times.items()}
    ratios = {}
    for model, bare in RATIO_PAIRS:
        for suffix in ("eval/b1", "eval/b4", "train/b2"):
            a, b = med.get(f"{model}/{suffix}"), med.get(f"{bare}/{suffix}")
            if a and b:
                ratios[f"{model}/{bare} {suffix}"] = {k: a[k] / b[k] for k in ("wall", "cpu")}
    for kind in ("bf16", "autocast"):
        a, b = med.get("bigmoe/eval/b4"), med.get(f"bigmoe/{kind}/b4")
        if a and b:
            ratios[f"speed-up {kind} (fp32/{kind}) b4"] = {k: a[k] / b[k] for k in ("wall", "cpu")}
    return {"median": med, "ratios": ratios}


def load_average() -> str:
    """``os.getloadavg()`` formatted, or ``n/a``."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def print_report(summary: dict, times: dict, memory: dict | None, diffs: dict, header: dict) -> None:
    """The table, the ratios, the memory and the bf16 logit differences."""
    print(" ".join(f"{k}={v}" for k, v in header.items()))
    print(f"{'case':<22}{'wall med s':>11}{'wall min s':>11}{'cpu med s':>11}{'peak MiB':>10}{'built MiB':>10}")
    for case, med in summary["median"].items():
        mem = (memory or {}).get(case, {})
        print(f"{case:<22}{med['wall']:>11.3f}{min(times[case]['wall']):>11.3f}{med['cpu']:>11.3f}"
              f"{mem.get('peak_mib', float('nan')):>10.0f}{mem.get('rss_built_mib', float('nan')):>10.0f}")
    for name, r in summary["ratios"].items():
        print(f"{name:<36} wall {r['wall']:.3f}  cpu {r['cpu']:.3f}")
    print(" ".join(f"{k}={v:.4g}" for k, v in diffs.items()))


def main(argv=None) -> dict:
    """Parse arguments, run the benchmark (or one ``--child`` case), print and return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 warm-up, 2 repeats, no children")
    parser.add_argument("--only", default="all", choices=("all", "bigmoe", "lasoftmoe"),
                        help="run only the BIG-MoE or only the La-SoftMoE cases (default all)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 7; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2; quick 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the child processes")
    parser.add_argument("--memory", action="store_true", help="run the child processes even with --quick")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    for name in ("repeats", "warmup", "threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name} must be >= {0 if name == 'warmup' else 1}, got {value}")
    torch.set_num_threads(args.threads)
    if args.child:
        result = child_main(args.child, args.quick)
        print(json.dumps(result))
        return result
    repeats = args.repeats or (2 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    header = {"torch": torch.__version__, "threads": torch.get_num_threads(), "quick": args.quick,
              "repeats": repeats, "warmup": warmup, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"),
              "only": args.only, "load_before": load_average()}
    cases = select_cases(args.only)
    memory = None
    if args.memory or not (args.no_memory or args.quick):
        memory = memory_in_children(args.quick, args.threads, cases)
    bench = Bench(args.quick, cases=cases)
    diffs = bench.logit_differences()
    times = measure(bench, repeats, warmup)
    header["load_after"] = load_average()
    summary = summarize(times)
    print_report(summary, times, memory, diffs, header)
    result = {"header": header, "times": times, **summary, "memory": memory, "logit_diff": diffs}
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
        os.replace(tmp, args.json)
    return result


if __name__ == "__main__":
    main()
