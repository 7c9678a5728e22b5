"""Time one La-SoftMoE layer against the CLIP-B/16 MLP it sits beside.

    python benchmarks/bench_softmoe.py                # forward, 197 and 589 tokens, batch 4, 2 threads
    python benchmarks/bench_softmoe.py --backward     # forward + backward instead

The MLP is CLIP-B's: Linear(768, 3072) -> QuickGELU -> Linear(3072, 768). The Soft MoE layer has
4 experts with a 64-wide bottleneck; its slots follow the layer's rule for the token count it is built
for (197 tokens -> 196 slots, 589 = 1 + 3 * 196 tokens -> 588 slots), and at 589 tokens the paper's fixed
196 slots are timed as well. Each figure is the median of ``--repeats`` timed calls after two warm-up
calls (MLP and Soft MoE calls interleaved); the ratio is Soft MoE time / MLP time, in wall time and in
process CPU time, beside the ratio of multiply-accumulates.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_bigmoe.layers_peer import quick_gelu
from modeling_bigmoe.layers_softmoe import LaSoftMoeLayer


class ClipMLP(nn.Module):
    """CLIP-B's block MLP."""

    def __init__(self, dim=768, hidden=3072):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(quick_gelu(self.fc1(x)))


def make_call(module, x, backward):
    def call():
        if backward:
            module.zero_grad(set_to_none=True)
            xx = x.detach().requires_grad_(True)
            module(xx).square().mean().backward()
        else:
            with torch.no_grad():
                module(x)

    return call


def time_interleaved(calls, repeats):
    """Median (wall, CPU) seconds per call.

    The calls are interleaved so that load from other processes hits all alike; the process CPU time
    (summed over threads) is reported beside the wall time because it is far less sensitive to a
    machine shared with other jobs.
    """
    for call in calls:
        call()
        call()
    wall = [[] for _ in calls]
    cpu = [[] for _ in calls]
    for _ in range(repeats):
        for call, w, c in zip(calls, wall, cpu):
            t, tc = time.perf_counter(), time.process_time()
            call()
            w.append(time.perf_counter() - t)
            c.append(time.process_time() - tc)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu)]


def macs(n, s, dim, experts_dim, hidden=3072):
    """Multiply-accumulates per sequence: (MLP, Soft MoE = logits + dispatch + combine + experts)."""
    return 2 * n * dim * hidden, 3 * n * s * dim + 2 * s * dim * experts_dim


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--expert-dim", type=int, default=64)
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dim = 768
    mlp = ClipMLP(dim)
    mode = "fwd+bwd" if args.backward else "fwd"
    print(f"batch {args.batch}, {args.threads} threads, {mode}, median of {args.repeats}; "
          f"MLP params {sum(p.numel() for p in mlp.parameters()):,}")
    print(f"{'tokens':>6} {'slots':>5} {'combine':>16} {'params':>8} {'MLP ms':>8} {'MoE ms':>8} "
          f"{'MoE/MLP':>8} {'cpu MLP':>8} {'cpu MoE':>8} {'cpu rat':>8} {'MAC rat':>8}")
    cases = [(197, {"num_tokens": 197}), (589, {"num_tokens": 589}), (589, {"slots_per_expert": 49})]
    for n, slot_kw in cases:
        x = torch.randn(args.batch, n, dim)
        layers = [LaSoftMoeLayer(dim, num_experts=4, expert_dim=args.expert_dim, combine=combine,
                                 combine_norm=norm, zero_init_output=False, **slot_kw)
                  for combine, norm in (("softmax", "none"), ("linear", "instance"))]
        (w_mlp, c_mlp), *t_moes = time_interleaved([make_call(m, x, args.backward) for m in [mlp, *layers]],
                                                   args.repeats)
        for layer, (w_moe, c_moe) in zip(layers, t_moes):
            n_params = sum(p.numel() for p in layer.parameters())
            mac_mlp, mac_moe = macs(n, layer.num_slots, dim, args.expert_dim)
            print(f"{n:>6} {layer.num_slots:>5} {layer.combine + '/' + layer.combine_norm:>16} {n_params:>8,} "
                  f"{1e3 * w_mlp:>8.2f} {1e3 * w_moe:>8.2f} {w_moe / w_mlp:>8.2f} "
                  f"{1e3 * c_mlp:>8.2f} {1e3 * c_moe:>8.2f} {c_moe / c_mlp:>8.2f} {mac_moe / mac_mlp:>8.2f}")

if __name__ == "__main__":
    main()
