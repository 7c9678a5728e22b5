"""Generate the Hub ``config.json`` files: ``python -m modeling_bigmoe.hub_configs [--root hub_configs]``.

The writer, the renderer and the command line here are shared with ``hub_configs_mmda`` and
``hub_configs_lasoftmoe`` (:func:`write_config_files`, :func:`render_config`, :func:`hub_configs_main`).

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
from collections.abc import Callable, Mapping

from .configuration_bigmoe import BigMoeConfig

__all__ = [
    "HUB_VARIANTS",
    "PARAMETER_COUNTS",
    "atomic_write_text",
    "build_hub_configs",
    "hub_configs_main",
    "main",
    "render_config",
    "tiny_config",
    "write_config_files",
    "write_hub_configs",
]

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


def _drop_versions(data):
    """``data`` without any ``transformers_version`` key, at any depth (sub-configs carry their own)."""
    if isinstance(data, dict):
        return {k: _drop_versions(v) for k, v in data.items() if k != "transformers_version"}
    return data


def render_config(config) -> str:
    """Deterministic ``config.json`` text of any of the package's configs (sorted keys, no
    ``transformers_version`` at any level)."""
    data = json.loads(config.to_json_string(use_diff=False))
    return json.dumps(_drop_versions(data), indent=2, sort_keys=True) + "\n"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8) through a temporary file in the same folder and ``os.replace``."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_config_files(root: str | os.PathLike, configs: Mapping[str, object]) -> list[str]:
    """Write ``{root}/{name}/config.json`` (:func:`render_config`, atomically) for every ``name -> config``;
    returns the paths."""
    paths = []
    for name, config in configs.items():
        directory = os.path.join(os.fspath(root), name)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "config.json")
        atomic_write_text(path, render_config(config))
        paths.append(path)
    return paths


def write_hub_configs(root: str | os.PathLike = "hub_configs") -> list[str]:
    """Write ``{root}/{variant}/config.json`` for every variant (atomically); returns the paths."""
    return write_config_files(root, build_hub_configs())


def hub_configs_main(doc: str, write: Callable[..., list[str]], argv: list[str] | None = None, *,
                     tokenizer_help: str | None = None) -> int:
    """The command line of the ``hub_configs*`` modules: ``--root`` (default ``hub_configs``) and, with
    ``tokenizer_help``, ``--clip-tokenizer DIR`` (a ``CLIPTokenizer`` folder passed to ``write`` as its second
    argument). Prints the written paths; returns 0."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--root", default="hub_configs", help="output folder (default: hub_configs)")
    if tokenizer_help is not None:
        parser.add_argument("--clip-tokenizer", default=None, help=tokenizer_help)
    args = parser.parse_args(argv)
    extra = []
    if tokenizer_help is not None:
        tokenizer = None
        if args.clip_tokenizer:
            from transformers import CLIPTokenizer

            tokenizer = CLIPTokenizer.from_pretrained(args.clip_tokenizer)
        extra.append(tokenizer)
    for path in write(args.root, *extra):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    return hub_configs_main(__doc__, write_hub_configs, argv)


if __name__ == "__main__":
    raise SystemExit(main())
