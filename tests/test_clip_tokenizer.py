"""CLIP tokenizer files from CLIP's BPE merge list, and the stored template ids of MMDA and La-SoftMoE.

The real check needs CLIP's ``bpe_simple_vocab_16e6.txt.gz``: ``make test`` downloads the ``open_clip_torch``
wheel that ships it (not installed) and passes its path in ``CLIP_BPE_SOURCE``; where that variable is set
the file must exist (the test fails otherwise), where it is unset (a bare ``pytest``) the test is skipped.
"""

import gzip
import json
import os
import zipfile
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from modeling_bigmoe.clip_tokenizer import (
    CLIP_NUM_MERGES,
    bytes_to_unicode,
    main,
    read_clip_bpe_merges,
    write_clip_tokenizer_files,
)


def _fake_bpe(path: Path, merges: list[str]) -> Path:
    path.write_bytes(gzip.compress(("\"bpe_simple_vocab_16e6.txt#version: 0.2\n" + "\n".join(merges) + "\n")
                                   .encode("utf-8")))
    return path


def _synthetic_merges() -> list[str]:
    symbols = list(bytes_to_unicode().values())
    return [f"{a} {b}" for a in symbols for b in symbols][:CLIP_NUM_MERGES + 10]  # extra lines are ignored


def test_byte_map_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ" and all(c.isprintable() for c in table.values())


def test_files_from_a_merge_list_and_a_wheel(tmp_path):
    merges = _synthetic_merges()
    source = _fake_bpe(tmp_path / "bpe_simple_vocab_16e6.txt.gz", merges)
    read = read_clip_bpe_merges(source)
    assert len(read) == CLIP_NUM_MERGES and read[0] == tuple(merges[0].split())
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(source, "pkg/bpe_simple_vocab_16e6.txt.gz")
    assert main([str(wheel), str(tmp_path / "tok")]) == 0
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    symbols = list(bytes_to_unicode().values())
    assert vocab[symbols[5]] == 5 and vocab[symbols[5] + "</w>"] == 261 and vocab["".join(read[0])] == 512
    lines = (tmp_path / "tok" / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and lines[1] == merges[0] and len(lines) == CLIP_NUM_MERGES + 1
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert tokenizer.bos_token_id == 49406 and tokenizer.eos_token_id == tokenizer.pad_token_id == 49407


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_clip_bpe_merges(tmp_path / "missing.txt.gz")
    with pytest.raises(ValueError, match="CLIP needs 48894"):
        read_clip_bpe_merges(_fake_bpe(tmp_path / "short.txt.gz", ["a b"] * 10))
    with pytest.raises(ValueError, match="line 4 is not a merge of two symbols"):
        read_clip_bpe_merges(_fake_bpe(tmp_path / "bad.txt.gz", ["a b", "c d", "e f g"]))
    plain = tmp_path / "plain.txt.gz"
    plain.write_text("not gzip")
    with pytest.raises(ValueError, match="not a gzip-compressed"):
        read_clip_bpe_merges(plain)
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("pkg/other.txt", "x")
    with pytest.raises(ValueError, match="no bpe_simple_vocab_16e6.txt.gz inside"):
        read_clip_bpe_merges(empty)


@pytest.fixture(scope="module")
def real_clip_tokenizer(tmp_path_factory):
    source = os.environ.get("CLIP_BPE_SOURCE")
    if not source:
        pytest.skip("CLIP_BPE_SOURCE is not set (make test sets it to the open_clip_torch wheel it downloads)")
    assert Path(source).is_file(), f"CLIP_BPE_SOURCE={source!r} is not a file"
    return CLIPTokenizer.from_pretrained(write_clip_tokenizer_files(source, tmp_path_factory.mktemp("clip-tok")))


def test_real_clip_tokenizer_matches_published_ids(real_clip_tokenizer):
    # the example of the transformers CLIP documentation: "a photo of a cat"
    assert real_clip_tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_stored_template_ids_match_the_real_tokenizer(real_clip_tokenizer):
    from modeling_bigmoe.hub_configs_lasoftmoe import CLIP_PROMPT_INPUT_IDS
    from modeling_bigmoe.hub_configs_lasoftmoe import clip_vit_base_patch16_config as lasoftmoe_config
    from modeling_bigmoe.hub_configs_mmda import CLIP_TEMPLATE_INPUT_IDS
    from modeling_bigmoe.hub_configs_mmda import clip_vit_base_patch16_config as mmda_config

    mmda = mmda_config(real_clip_tokenizer)  # re-tokenises and raises if the stored ids differ
    assert mmda.spoof_template_input_ids == CLIP_TEMPLATE_INPUT_IDS["spoof"]
    assert mmda.live_template_input_ids == CLIP_TEMPLATE_INPUT_IDS["live"]
    for template, (fake, live) in CLIP_PROMPT_INPUT_IDS.items():
        assert real_clip_tokenizer(template.format("fake"))["input_ids"] == fake
        assert real_clip_tokenizer(template.format("live"))["input_ids"] == live
    lasoftmoe_config(real_clip_tokenizer)  # the same check inside the config builder
