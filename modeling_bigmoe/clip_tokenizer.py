"""CLIP's tokenizer files, offline: ``vocab.json`` + ``merges.txt`` from CLIP's original BPE merge list.

MMDA and La-SoftMoE classify against text templates whose CLIP token ids are stored in their configs
(``hub_configs_mmda.CLIP_TEMPLATE_INPUT_IDS``, ``hub_configs_lasoftmoe.CLIP_PROMPT_INPUT_IDS``) so that a
reference-size config can be built without downloading anything. To check or recompute those ids without
the Hub, :func:`write_clip_tokenizer_files` turns CLIP's original merge list (``bpe_simple_vocab_16e6.txt.gz``,
the file OpenAI's CLIP code and the ``open_clip_torch`` wheel on PyPI ship) into the two files
``transformers.CLIPTokenizer.from_pretrained`` reads. The vocabulary is built the way CLIP builds its
encoder: the 256 byte symbols, the same with the end-of-word mark ``</w>``, one entry per merge (the first
``49152 - 256 - 2`` lines after the header), then ``<|startoftext|>`` and ``<|endoftext|>`` (49408 entries,
ids 49406 and 49407 for the two specials, as in ``openai/clip-vit-base-patch16``).

Command line::

    pip download --no-deps open_clip_torch -d wheels/
    python -m modeling_bigmoe.clip_tokenizer wheels/open_clip_torch-*.whl out/clip-tokenizer
    python -m modeling_bigmoe.hub_configs_mmda --clip-tokenizer out/clip-tokenizer
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import zipfile
from pathlib import Path

from .hub_configs import atomic_write_text

__all__ = ["CLIP_BPE_NAME", "CLIP_NUM_MERGES", "bytes_to_unicode", "read_clip_bpe_merges",
           "write_clip_tokenizer_files", "main"]

CLIP_BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
CLIP_NUM_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges of its 16e6 BPE list
_SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable character map (the printable Latin-1 bytes map to themselves)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _bpe_bytes(source: str | os.PathLike) -> bytes:
    """The gzip-compressed merge list from ``source``: the ``.txt.gz`` itself, or a wheel/zip holding it."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP BPE source {path} does not exist (a {CLIP_BPE_NAME} or a wheel holding it)")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/" + CLIP_BPE_NAME) or n == CLIP_BPE_NAME]
            if not names:
                raise ValueError(f"{path}: no {CLIP_BPE_NAME} inside the archive")
            return archive.read(names[0])
    return path.read_bytes()


def read_clip_bpe_merges(source: str | os.PathLike) -> list[tuple[str, str]]:
    """CLIP's merges (``CLIP_NUM_MERGES`` pairs, in rank order) from its ``.txt.gz`` or a wheel holding it."""
    data = _bpe_bytes(source)
    try:
        text = gzip.decompress(data).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"{source}: not a gzip-compressed UTF-8 BPE merge list ({exc})") from exc
    lines = text.rstrip("\n").split("\n")[1:CLIP_NUM_MERGES + 1]  # line 0 is the "#version" header
    merges = []
    for number, line in enumerate(lines, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{source}: line {number} is not a merge of two symbols: {line!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != CLIP_NUM_MERGES:
        raise ValueError(f"{source}: {len(merges)} merges, CLIP needs {CLIP_NUM_MERGES}")
    return merges


def write_clip_tokenizer_files(source: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``special_tokens_map.json`` for ``CLIPTokenizer`` into
    ``directory`` (created; files written atomically) and return it."""
    merges = read_clip_bpe_merges(source)
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges] + list(_SPECIALS)
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{source}: the merge list yields duplicate vocabulary entries")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n",
        "special_tokens_map.json": json.dumps({"bos_token": _SPECIALS[0], "eos_token": _SPECIALS[1],
                                               "unk_token": _SPECIALS[1], "pad_token": _SPECIALS[1]}),
        "tokenizer_config.json": json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77}),
    }
    for name, text in files.items():
        atomic_write_text(out / name, text)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m modeling_bigmoe.clip_tokenizer SOURCE OUT_DIR``."""
    parser = argparse.ArgumentParser(prog="python -m modeling_bigmoe.clip_tokenizer",
                                     description=f"Write CLIPTokenizer files from CLIP's {CLIP_BPE_NAME} "
                                                 "(or a wheel that ships it, e.g. open_clip_torch).")
    parser.add_argument("source", help=f"{CLIP_BPE_NAME} or a .whl/.zip containing it")
    parser.add_argument("out_dir", help="folder for vocab.json and merges.txt")
    args = parser.parse_args(argv)
    out = write_clip_tokenizer_files(args.source, args.out_dir)
    print(f"wrote {out}/vocab.json and merges.txt ({CLIP_NUM_MERGES + 514} tokens)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
