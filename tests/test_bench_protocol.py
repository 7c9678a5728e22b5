"""``benchmarks/bench_protocol.py`` in-process with ``--quick`` on a tiny synthetic benchmark: the tables must
hold exactly what the per-run ``results.json`` files say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from common import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_protocol.py"


def _load():
    return load_script("benchmarks/bench_protocol.py", "bench_protocol")


def test_bench_protocol_quick_table_matches_results_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIGMOE_CACHE", str(tmp_path / "cache"))
    bench = _load()
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    result = bench.main(["--quick", "--seeds", "1,2", "--samples-per-domain", "24", "--output-dir", str(out),
                         "--no-progress"])
    assert torch.get_num_threads() == threads  # restored
    assert "docs_figure" not in result  # --quick never overwrites docs/bench_protocol.png
    # the files every (fold, model, seed) run wrote
    files = sorted(out.glob("*/*/seed*/results.json"))
    assert len(files) == 4  # 1 fold x 2 models x 2 seeds
    per_run = {}
    for f in files:
        r = json.loads(f.read_text(encoding="utf-8"))
        frame = r["tests"]["all"]["frame"]
        per_run[(r["model"], r["fold"], int(f.parent.name.removeprefix("seed")))] = frame
    assert {(m, s) for m, _, s in per_run} == {("bigmoe", 1), ("bigmoe", 2), ("baseline", 1), ("baseline", 2)}
    table = result["table"]
    for model in ("bigmoe", "baseline"):
        e = table[model]
        assert e["n_runs"] == 2 and e["seeds"] == [1, 2] and e["folds"] == ["PSW→C"]
        for key in ("hter", "auc", "oracle_hter"):
            values = [per_run[(model, "PSW→C", s)][key] for s in (1, 2)]
            # hand formula for two values: mean, and sample std = |a - b| / sqrt(2)
            assert e["overall"][key]["mean"] == pytest.approx((values[0] + values[1]) / 2, abs=1e-12)
            assert e["overall"][key]["std"] == pytest.approx(abs(values[0] - values[1]) / np.sqrt(2), abs=1e-12)
            # one fold: each seed's fold mean is that run's value
            assert e["per_seed_mean"][key] == pytest.approx({"1": values[0], "2": values[1]}, abs=1e-12)
            assert e["seed_std"][key] == pytest.approx(abs(values[0] - values[1]) / np.sqrt(2), abs=1e-12)
            fold = e["per_fold"]["PSW→C"][key]
            assert fold["per_seed"] == pytest.approx({"1": values[0], "2": values[1]}, abs=1e-12)
        # the Markdown row prints the same numbers in %
        hter, auc = e["overall"]["hter"], e["overall"]["auc"]
        row = (f"| {model} | 2 (1 x 2) | {100 * hter['mean']:.2f} ± {100 * hter['std']:.2f} | "
               f"{100 * auc['mean']:.2f} ± {100 * auc['std']:.2f} |")
        assert row in (out / "bench_protocol.md").read_text(encoding="utf-8")
    # JSON on disk = returned result; the run list points at the files read above
    on_disk = json.loads((out / "bench_protocol.json").read_text(encoding="utf-8"))
    assert on_disk["table"] == json.loads(json.dumps(table))
    for run in on_disk["runs"]:
        assert run["hter"] == pytest.approx(per_run[(run["model"], run["fold"], run["seed"])]["hter"], abs=1e-12)
        assert Path(run["results"]).is_file()
    assert (out / "bench_protocol.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "HTER % (oracle)" in printed and "std of per-seed mean AUC" in printed


def test_aggregate_hand_computed_and_overrides_accessor():
    bench = _load()

    def run(model, fold, seed, hter, auc):
        return {"model": model, "fold": fold, "seed": seed,
                "tests": {"all": {"frame": {"hter": hter, "auc": auc, "oracle_hter": hter / 2}}}}

    runs = [run("m", "A", 1, 0.1, 0.9), run("m", "B", 1, 0.3, 0.7), run("m", "A", 2, 0.2, 0.8),
            run("m", "B", 2, 0.6, 0.6)]
    e = bench.aggregate(runs)["m"]
    assert e["overall"]["hter"]["mean"] == pytest.approx(0.3)
    assert e["overall"]["hter"]["std"] == pytest.approx(np.std([0.1, 0.3, 0.2, 0.6], ddof=1))
    assert e["per_seed_mean"]["hter"] == pytest.approx({"1": 0.2, "2": 0.4})
    assert e["seed_std"]["hter"] == pytest.approx(np.sqrt(0.02))  # seed means 0.2, 0.4
    assert e["per_fold"]["B"]["auc"]["mean"] == pytest.approx(0.65)
    assert e["per_fold"]["B"]["auc"]["std"] == pytest.approx(0.1 / np.sqrt(2))
    assert e["overall"]["oracle_hter"]["mean"] == pytest.approx(0.15)

    shared = {"cpb_prompt_dim": 16}
    assert bench.demo_overrides("baseline", shared) == shared
    keyed = {"bigmoe": {"cpb_prompt_dim": 8}, "mmda": {"moe_num_experts": 2}}
    assert bench.demo_overrides("bigmoe", keyed) == {"cpb_prompt_dim": 8}
    assert bench.demo_overrides("baseline", keyed) == {"cpb_prompt_dim": 8}  # same tower as BIG-MoE
    with pytest.raises(ValueError, match="no entry for model 'la_softmoe'"):
        bench.demo_overrides("la_softmoe", keyed)
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "bigmoe,vit"])


def test_demo_spec_applies_per_model_training_changes(monkeypatch):
    bench = _load()
    monkeypatch.setattr(bench.demo_cli, "DEMO_TRAINING_OVERRIDES", {"bigmoe": {"num_train_epochs": 3,
                                                                                  "learning_rate": 5e-4}},
                        raising=False)
    assert bench.demo_spec("bigmoe").training_overrides == {"num_train_epochs": 3, "learning_rate": 5e-4}
    assert bench.demo_spec("bigmoe", epochs=1).training_overrides == {"learning_rate": 5e-4}  # --epochs wins
    assert bench.demo_spec("baseline").training_overrides == {}
    assert bench.demo_spec("baseline").image_size == bench.demo_spec("bigmoe").image_size == 64
