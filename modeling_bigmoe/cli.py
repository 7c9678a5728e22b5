"""``bigmoe-fas`` command line. Subcommands are registered in :func:`build_parser` (one ``add_*`` each).

``bigmoe-fas demo``: build the tiny BIG-MoE, run forward + backward on generated inputs, print the
trainable-parameter summary and the logits.
"""

from __future__ import annotations

import argparse
import time

import torch

__all__ = ["build_parser", "main", "run_demo"]


def run_demo(args: argparse.Namespace) -> int:
    """The ``demo`` subcommand."""
    from .hub_configs import tiny_config
    from .modeling_bigmoe import BigMoeForFaceAntiSpoofing

    torch.manual_seed(args.seed)
    config = tiny_config()
    model = BigMoeForFaceAntiSpoofing(config)
    model.train()
    print(f"BIG-MoE tiny: image {config.vision_config.image_size} px, patch {config.vision_config.patch_size}, "
          f"hidden {config.vision_config.hidden_size}, {config.vision_config.num_hidden_layers} layers, "
          f"{config.moe_num_experts} experts; adapted layers {model.bigmoe.adapted_layers}")
    model.print_trainable_parameters()
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(args.seed)
    rgb, depth, ir = (torch.randn(args.batch_size, 3, size, size, generator=generator) for _ in range(3))
    labels = torch.arange(args.batch_size) % 2
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    start = time.perf_counter()
    for step in range(args.steps):
        out = model(pixel_values=rgb, depth_pixel_values=depth, ir_pixel_values=ir, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        print(f"step {step}: loss {out.loss.item():.4f}  modality codes {out.modality_code.tolist()}")
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=rgb, depth_pixel_values=depth, ir_pixel_values=ir, labels=labels)
    torch.set_printoptions(precision=4, sci_mode=False)
    print(f"eval loss {out.loss.item():.4f}; logits (spoof, live):\n{out.logits}")
    print(f"live scores {out.logits.softmax(-1)[:, 1].tolist()}  ({time.perf_counter() - start:.2f} s)")
    return 0


def add_demo_parser(subparsers) -> None:
    """Register ``demo``."""
    demo = subparsers.add_parser("demo", help="forward + backward of the tiny model on generated inputs")
    demo.add_argument("--steps", type=int, default=3, help="optimiser steps (default 3)")
    demo.add_argument("--batch-size", type=int, default=4)
    demo.add_argument("--lr", type=float, default=1e-3)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=run_demo)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; later subcommands (train, evaluate, predict, protocol) add themselves here."""
    parser = argparse.ArgumentParser(prog="bigmoe-fas", description="BIG-MoE multimodal face anti-spoofing")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``bigmoe-fas``."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
