"""Speed, cache and difficulty benchmark of the embedded synthetic FAS benchmark.

    python benchmarks/bench_synthetic.py                 # triplets/s at 64 and 112 px, cache reload time
    python benchmarks/bench_synthetic.py --difficulty    # + logistic-regression intra / LODO AUC table
    python benchmarks/bench_synthetic.py --skip-speed --difficulty --seed 1

Speed: 4 domains x ``--n`` frames (3 frames per video) rendered by ``generate_domain``, median of 3 repeats.
Cache: ``load_synthetic_benchmark`` with the default arguments into a temporary cache folder; the first call
generates (timed, includes PNG encoding and Arrow writing), the second loads.
Difficulty: features = each modality average-pooled to 16x16, standardised; ``LogisticRegression(C=0.05)``;
intra = a domain's train split -> its test split; LODO = train splits of the other domains -> the target's test
split; AUC in %.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_bigmoe import synthetic as sy


def speed(size, n, repeats=3, frames_per_video=3):
    """Median wall-clock triplets/s over ``repeats`` and the median triplets per CPU-second of this process
    (the rate one dedicated core would give; robust to other load on a shared machine)."""
    rates, cpu_rates = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        for d in ("C", "P", "S", "W"):
            sy.generate_domain(d, n, size=size, seed=0, frames_per_video=frames_per_video)
        rates.append(4 * n / (time.perf_counter() - t))
        cpu_rates.append(4 * n / max(time.process_time() - c, 1e-9))
    return statistics.median(rates), rates, statistics.median(cpu_rates)


def _features(split, size):
    k = size // 16

    def pool(a):
        return a.reshape(len(a), 16, k, 16, k, -1).mean((2, 4)).reshape(len(a), -1)

    rgb = np.stack([np.asarray(im) for im in split["rgb"]]).astype(np.float32)
    dep = np.stack([np.asarray(im) for im in split["depth"]]).astype(np.float32)[..., None]
    ir = np.stack([np.asarray(im) for im in split["ir"]]).astype(np.float32)[..., None]
    return (
        {"RGB": pool(rgb), "depth": pool(dep), "IR": pool(ir)},
        np.asarray(split["label"]),
        np.asarray(split["domain"]),
    )


def difficulty(dd, size):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    ftr, ytr, dtr = _features(dd["train"], size)
    fte, yte, dte = _features(dd["test"], size)
    sets = {
        "RGB": ["RGB"],
        "depth": ["depth"],
        "IR": ["IR"],
        "RGB+D": ["RGB", "depth"],
        "RGB+IR": ["RGB", "IR"],
        "ALL": ["RGB", "depth", "IR"],
    }
    doms = sorted(set(dtr))

    def fit_auc(Xa, ya, Xb, yb):
        mu, sd = Xa.mean(0), Xa.std(0) + 1e-6
        clf = LogisticRegression(C=0.05, max_iter=3000).fit((Xa - mu) / sd, ya)
        return 100 * roc_auc_score(yb, clf.predict_proba((Xb - mu) / sd)[:, 1])

    print("\nmodalities | " + " | ".join(f"{d} intra / LODO" for d in doms) + " | mean intra / LODO")
    for name, mods in sets.items():
        Xtr = np.concatenate([ftr[m] for m in mods], 1)
        Xte = np.concatenate([fte[m] for m in mods], 1)
        cells, intra, lodo = [], [], []
        for d in doms:
            a = fit_auc(Xtr[dtr == d], ytr[dtr == d], Xte[dte == d], yte[dte == d])
            b = fit_auc(Xtr[dtr != d], ytr[dtr != d], Xte[dte == d], yte[dte == d])
            intra.append(a)
            lodo.append(b)
            cells.append(f"{a:5.1f} / {b:5.1f}")
        print(f"{name:10s} | " + " | ".join(cells) + f" | {np.mean(intra):5.1f} / {np.mean(lodo):5.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--n", type=int, default=150, help="frames per domain per repeat (64 px; 112 px uses n/2)"
    )
    ap.add_argument("--difficulty", action="store_true")
    ap.add_argument("--samples-per-domain", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0, help="benchmark seed for the cache / difficulty part")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs visible, {sy._default_workers()} rendering threads")
    for size, n in () if args.skip_speed else ((64, args.n), (112, max(8, args.n // 2))):
        med, rates, cpu = speed(size, n)
        print(
            f"{size:4d} px: {med:6.1f} triplets/s wall (median of 3: {', '.join(f'{r:.1f}' for r in rates)}; "
            f"4 domains x {n}); {cpu:.1f} triplets per CPU-second"
        )
    with tempfile.TemporaryDirectory() as tmp:
        kw = dict(samples_per_domain=args.samples_per_domain, seed=args.seed, cache_dir=tmp, progress=False)
        t = time.perf_counter()
        dd = sy.load_synthetic_benchmark(**kw)
        t_gen = time.perf_counter() - t
        t = time.perf_counter()
        dd = sy.load_synthetic_benchmark(**kw)
        t_load = time.perf_counter() - t
        rows = sum(len(s) for s in dd.values())
        print(
            f"default benchmark ({rows} rows, 64 px): first call {t_gen:.2f} s "
            f"({rows / t_gen:.0f} triplets/s end to end), cache reload {t_load:.3f} s"
        )
        print({k: len(v) for k, v in dd.items()})
        if args.difficulty:
            difficulty(dd, 64)


if __name__ == "__main__":
    main()
