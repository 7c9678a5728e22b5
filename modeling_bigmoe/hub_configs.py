"""Generate the Hub ``config.json`` files: ``python -m modeling_bigmoe.hub_configs [--root hub_configs]``.

Two variants:

* ``bigmoe-clip-vit-base-patch16``: the reference BIG-MoE on CLIP ViT-B/16 (every spec default).
* ``bigmoe-tiny``: 32 px images, patch 8 (4 x 4 grid), hidden 32, 3 layers, 16 experts; for tests and the
  demo (trains in seconds on a CPU).

Exact parameter counts (``tests/test_hub_configs.py`` checks them on the meta device):

=============================  ===========  ===========  ===========
variant                        total        trainable    frozen
=============================  ===========  ===========  ===========
bigmoe-clip-vit-base-patch16   89,973,587   11,263,571   78,710,016
bigmoe-tiny                    71,008       47,136       23,872
=============================  ===========  ===========  ===========

Reference size, trainable parts:

==========================================  ==========  =================================================
part                                        params      detail
==========================================  ==========  =================================================
11 IGMAs (layers 0-10)                      1,016,576   92,416 each: down 6,152, gate_fuse 200, gate_prompt
                                                        520, up 6,912, PEER 78,632 (expert tables 2 x 1600
                                                        x 24 = 76,800, keys 1,280, queries 512, norms 40)
10 CPBs (layers 0-9)                        1,198,110   119,811 each: CDC 16->64 9,216, CDC 64->64 36,864,
                                                        CDC 128->64 73,728, ECA 3
prompt generator                            1,502,515   9 prompts 3x224x224 1,354,752, CDC 9->3 243,
                                                        patch projection 147,456 + 64
last CLIP block (trainable_backbone_layers) 7,087,872
CLIP post-LN (preln wiring)                 1,536
CLS + position table + modality embedding   455,424     768 + 589 x 768 + 3 x 768
head                                        1,538       Linear(768, 2)
==========================================  ==========  =================================================

Frozen: the rest of the CLIP ViT-B/16 vision tower (85,799,424 in all, including its own class and
position embeddings, which are kept, frozen and unused so that the tower stays a plain CLIP checkpoint).

Against the spec's estimate (~11.6 M trainable of ~90 M): the IGMA of layer 11 and the CPBs of layers 10
and 11 are not built (their outputs cannot reach the CLS head, spec §6): -92,416 - 2 x 119,811 = -332,038;
the tiled init adds a 2,304-parameter modality embedding; CLIP's post-LN (1,536) is trained.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from .configuration_bigmoe import BigMoeConfig

__all__ = ["HUB_VARIANTS", "PARAMETER_COUNTS", "build_hub_configs", "render_config", "write_hub_configs", "main"]

HUB_VARIANTS = ("bigmoe-clip-vit-base-patch16", "bigmoe-tiny")

# variant -> (total, trainable); checked by tests/test_hub_configs.py
PARAMETER_COUNTS = {
    "bigmoe-clip-vit-base-patch16": (89_973_587, 11_263_571),
    "bigmoe-tiny": (71_008, 47_136),
}


def tiny_config(**overrides) -> BigMoeConfig:
    """The tiny variant (tests, demo): 32 px, patch 8, hidden 32, 3 layers, 16 experts, bottleneck 4."""
    kwargs = dict(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8, "projection_dim": 32},
        moe_num_experts=16, moe_bottleneck_dim=4, moe_key_dim=4, cpb_prompt_dim=8,
        base_model_name_or_path="none (random tiny CLIP tower)",
    )
    kwargs.update(overrides)
    return BigMoeConfig(**kwargs)


def build_hub_configs() -> dict[str, BigMoeConfig]:
    """The configs of :data:`HUB_VARIANTS`."""
    return {
        "bigmoe-clip-vit-base-patch16": BigMoeConfig(),
        "bigmoe-tiny": tiny_config(),
    }


def render_config(config: BigMoeConfig) -> str:
    """Deterministic ``config.json`` text (sorted keys, no ``transformers_version``)."""
    data = json.loads(config.to_json_string(use_diff=False))
    data.pop("transformers_version", None)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_hub_configs(root: str | os.PathLike = "hub_configs") -> list[str]:
    """Write ``{root}/{variant}/config.json`` for every variant (atomically); returns the paths."""
    paths = []
    for name, config in build_hub_configs().items():
        directory = os.path.join(os.fspath(root), name)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "config.json")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(render_config(config))
        os.replace(tmp, path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="hub_configs", help="output folder (default: hub_configs)")
    args = parser.parse_args(argv)
    for path in write_hub_configs(args.root):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
