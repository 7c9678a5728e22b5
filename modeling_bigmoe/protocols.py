"""Cross-domain evaluation protocols of the MMDG benchmark line, for any set of domains.

* **Protocol 1** (:func:`protocol1_folds`), leave one domain out: train on the other domains' train
  splits, fix the threshold / select the checkpoint on *their* validation splits, test on the left-out
  domain's test split. MMDG: CPS→W, CPW→S, CSW→P, PSW→C; report each and the mean.
* **Protocol 2** (:func:`protocol2_settings`, :func:`protocol2_folds`), missing modalities at test:
  the Protocol 1 folds (trained with all modalities) tested with Depth, IR, or Depth + IR missing.
* **Protocol 3** (:func:`protocol3_folds`), limited source domains: CW→PS and PS→CW.

A :class:`Fold` names its source domains, target domains and the modalities missing at test.
:func:`build_fold` cuts a benchmark ``DatasetDict`` (the data contract: splits train / validation /
test holding every domain, told apart by the ``domain`` column) into that fold's
train / validation / test ``DatasetDict``. In the returned test split a missing modality is ``None``
in every row, as the data contract prescribes, so any collator turns it into a zero input with
``modality_mask`` 0.

Fold names use the papers' arrow ("CPS→W"); :attr:`Fold.alias` is the ASCII, file-name-safe form
("CPS-W", "CPS-W_no_depth_ir"). Domain names of one character are concatenated, longer ones joined
with "+" ("CeFA+WMCA→SURF").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "MMDG_DOMAINS",
    "MMDG_PROTOCOL3_PAIRS",
    "MODALITIES",
    "Fold",
    "build_fold",
    "parse_fold",
    "protocol1_folds",
    "protocol2_folds",
    "protocol2_settings",
    "protocol3_folds",
    "protocol_folds",
]

MMDG_DOMAINS: tuple[str, ...] = ("C", "P", "S", "W")
"""The MMDG domains: C = CeFA, P = PADISI-Face, S = CASIA-SURF, W = WMCA (also the synthetic names)."""

MODALITIES: tuple[str, ...] = ("rgb", "depth", "ir")
"""Modality columns in the package's fixed order (the order of ``modality_mask``)."""

MMDG_PROTOCOL3_PAIRS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("C", "W"), ("P", "S")),
    (("P", "S"), ("C", "W")),
)
"""Protocol 3 of MMDG as (sources, targets): CW→PS and PS→CW."""

_SHORT = {"rgb": "RGB", "depth": "D", "ir": "IR"}
_FROM_SHORT = {v.lower(): k for k, v in _SHORT.items()}
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9_]+$")
_SPLITS = ("train", "validation", "test")


def _domain_tuple(values: Iterable[str] | str, what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = values.split("+") if "+" in values else list(values)
    out = tuple(values)
    if not out:
        raise ValueError(f"Fold: {what} is empty")
    for d in out:
        if not isinstance(d, str) or not _DOMAIN_RE.match(d):
            raise ValueError(f"Fold: {what} holds {d!r}; domain names must be non-empty [A-Za-z0-9_] strings")
    if len(set(out)) != len(out):
        raise ValueError(f"Fold: {what} repeats a domain: {out}")
    return out


def _join(domains: Sequence[str]) -> str:
    return "".join(domains) if all(len(d) == 1 for d in domains) else "+".join(domains)


@dataclass(frozen=True)
class Fold:
    """One train/test split of a protocol.

    Args:
        sources: the domains trained on (their train splits) and validated on (their validation
            splits: threshold and checkpoint are chosen there, never on the target).
        targets: the domains tested on (their test splits).
        missing_modalities: modalities absent at test (subset of ``("rgb", "depth", "ir")``, not all).
        name: display name; by default ``"CPS→W"`` or ``"CPS→W w/o D+IR"`` (built from the above).

    A string for ``sources`` / ``targets`` is split at "+" when it holds one, otherwise into characters
    ("CPS" = C, P, S); pass a tuple for a single multi-character domain (``("CeFA",)``).
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    missing_modalities: tuple[str, ...] = ()
    name: str = field(default="", compare=False)

    def __post_init__(self):
        sources = _domain_tuple(self.sources, "sources")
        targets = _domain_tuple(self.targets, "targets")
        overlap = sorted(set(sources) & set(targets))
        if overlap:
            raise ValueError(f"Fold: domains {overlap} are both source and target (sources {sources}, "
                             f"targets {targets})")
        missing = self.missing_modalities
        missing = (missing,) if isinstance(missing, str) else tuple(missing)
        unknown = [m for m in missing if m not in MODALITIES]
        if unknown:
            raise ValueError(f"Fold: missing_modalities {unknown} unknown; choose from {MODALITIES}")
        if len(set(missing)) != len(missing):
            raise ValueError(f"Fold: missing_modalities repeats a modality: {missing}")
        if len(missing) == len(MODALITIES):
            raise ValueError("Fold: missing_modalities lists every modality; at least one must remain")
        missing = tuple(m for m in MODALITIES if m in missing)  # canonical order
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "missing_modalities", missing)
        if not self.name:
            name = f"{_join(sources)}→{_join(targets)}"
            if missing:
                name += " w/o " + "+".join(_SHORT[m] for m in missing)
            object.__setattr__(self, "name", name)
        elif not isinstance(self.name, str):
            raise ValueError(f"Fold: name must be a string, got {self.name!r}")

    @property
    def alias(self) -> str:
        """ASCII, file-name-safe name: ``"CPS-W"``, ``"CPS-W_no_depth_ir"``."""
        alias = f"{_join(self.sources)}-{_join(self.targets)}"
        if self.missing_modalities:
            alias += "_no_" + "_".join(self.missing_modalities)
        return alias

    @property
    def domains(self) -> tuple[str, ...]:
        """Sources then targets."""
        return self.sources + self.targets

    @property
    def test_modality_mask(self) -> tuple[int, int, int]:
        """``(rgb, depth, ir)`` presence at test, 1 = present (the order of ``modality_mask``)."""
        return tuple(int(m not in self.missing_modalities) for m in MODALITIES)

    def __str__(self) -> str:
        return self.name


def parse_fold(text: str, domains: Sequence[str] | None = None) -> Fold:
    """Parse a fold name or alias: ``"CPS→W"``, ``"CPS-W"``, ``"CPS->W"``, ``"C+P+S-W"``,
    ``"CPS→W w/o D+IR"``, ``"CPS-W_no_depth_ir"``.

    A side without "+" is read as one-character domains ("CPS" = C, P, S) unless it is itself one of
    the known ``domains`` (``parse_fold("CeFA+WMCA-SURF", domains=["CeFA", "WMCA", "SURF"])``).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"parse_fold: expected a fold name like 'CPS→W' or 'CPS-W', got {text!r}")
    body = text.strip()
    missing: tuple[str, ...] = ()
    m = re.search(r"\s+w/o\s+(.+)$", body)
    if m:
        parts = [p.strip().lower() for p in m.group(1).split("+")]
        if any(p not in _FROM_SHORT for p in parts):
            raise ValueError(f"parse_fold: unknown modality in {text!r}; use D, IR or RGB after 'w/o'")
        missing, body = tuple(_FROM_SHORT[p] for p in parts), body[: m.start()]
    else:
        m = re.search(r"_no_((?:rgb|depth|ir)(?:_(?:rgb|depth|ir))*)$", body)
        if m:
            missing, body = tuple(m.group(1).split("_")), body[: m.start()]
    sides = re.split(r"\s*(?:→|->|-)\s*", body)
    if len(sides) != 2 or not all(sides):
        raise ValueError(f"parse_fold: expected '<sources>→<targets>' (or '-' / '->'), got {text!r}")
    known = set(domains or ())
    src, tgt = ((side,) if side in known else side for side in sides)
    return Fold(sources=src, targets=tgt, missing_modalities=missing)


def _check_domains(domains: Sequence[str], need: int) -> tuple[str, ...]:
    if isinstance(domains, str):
        domains = domains.split("+") if "+" in domains else list(domains)
    out = _domain_tuple(domains, "domains")
    if len(out) < need:
        raise ValueError(f"need at least {need} domains, got {out}")
    return out


def protocol1_folds(domains: Sequence[str] = MMDG_DOMAINS) -> list[Fold]:
    """Protocol 1, leave one domain out: one fold per target, in the order of ``domains``.

    ``protocol1_folds()`` gives PSW→C, CSW→P, CPW→S, CPS→W. Sources keep the order of ``domains``.
    """
    domains = _check_domains(domains, 2)
    return [Fold(sources=tuple(d for d in domains if d != t), targets=(t,)) for t in domains]


def protocol2_settings() -> list[tuple[str, ...]]:
    """Protocol 2's missing-modality settings at test: Depth, IR, and Depth + IR missing."""
    return [("depth",), ("ir",), ("depth", "ir")]


def protocol2_folds(
    domains: Sequence[str] = MMDG_DOMAINS, settings: Sequence[Sequence[str]] | None = None
) -> list[Fold]:
    """Protocol 2: every Protocol 1 fold under every missing-modality setting (setting-major order).

    The model and the source-validation threshold are Protocol 1's (trained with all modalities);
    only the test split differs, so one trained model per target serves all settings.
    """
    settings = protocol2_settings() if settings is None else settings
    return [
        Fold(sources=f.sources, targets=f.targets, missing_modalities=tuple(s))
        for s in settings
        for f in protocol1_folds(domains)
    ]


def protocol3_folds(
    pairs: Sequence[tuple[Sequence[str] | str, Sequence[str] | str]] | None = None,
) -> list[Fold]:
    """Protocol 3, limited source domains: one fold per ``(sources, targets)`` pair.

    Default: MMDG's CW→PS and PS→CW. Other domain sets pass their own pairs, e.g.
    ``[("AB", "CD"), (("CeFA",), ("WMCA", "SURF"))]``.
    """
    pairs = MMDG_PROTOCOL3_PAIRS if pairs is None else pairs
    folds = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"protocol3_folds: pairs[{i}] must be (sources, targets), got {pair!r}")
        folds.append(Fold(sources=pair[0], targets=pair[1]))
    if not folds:
        raise ValueError("protocol3_folds: pairs is empty")
    return folds


def protocol_folds(protocol: int | str, domains: Sequence[str] = MMDG_DOMAINS, **kwargs) -> list[Fold]:
    """The folds of protocol 1, 2 or 3 (also ``"P1"``, ``"p2"``, ...); extra kwargs go to that function."""
    key = str(protocol).strip().lower().lstrip("p")
    if key == "1":
        return protocol1_folds(domains, **kwargs)
    if key == "2":
        return protocol2_folds(domains, **kwargs)
    if key == "3":
        folds = protocol3_folds(**kwargs)
        domains = _check_domains(domains, 2)
        unknown = sorted({d for f in folds for d in f.domains} - set(domains))
        if unknown:
            raise ValueError(f"protocol 3 folds use domains {unknown} outside domains={domains}; "
                             "pass pairs=[(sources, targets), ...] for this domain set")
        return folds
    raise ValueError(f"protocol must be 1, 2 or 3 (or 'P1'...), got {protocol!r}")


# ----------------------------------------------------------------------------------------------
# building a fold's splits
# ----------------------------------------------------------------------------------------------
class _DomainIn:
    """Batched filter predicate on the ``domain`` column (a class, so datasets can fingerprint it)."""

    def __init__(self, domains: Iterable[str]):
        self.domains = frozenset(domains)

    def __call__(self, batch_domains: list[str]) -> list[bool]:
        return [d in self.domains for d in batch_domains]


def _restore_format(ds, fmt: dict):
    ds.set_format(type=fmt["type"], columns=fmt["columns"], output_all_columns=fmt["output_all_columns"],
                  **fmt["format_kwargs"])
    return ds


def _blank_modalities(ds, modalities: Sequence[str]):
    """Set ``modalities`` to None in every row (zero-copy for the other columns)."""
    if not modalities:
        return ds
    order = list(ds.column_names)
    for m in modalities:
        if m not in order:
            raise ValueError(
                f"build_fold: missing modality column {m!r} not in the test split's columns {order}")
        feature = ds.features[m]
        ds = ds.remove_columns(m).add_column(m, [None] * len(ds), feature=feature)
    return ds.select_columns(order)


def _labels_summary(labels: Sequence[int]) -> str:
    c = Counter(int(x) for x in labels)
    return f"{c.get(1, 0)} live / {c.get(0, 0)} spoof"


def build_fold(benchmark, fold: Fold, *, missing_in_validation: bool = False):
    """Cut ``benchmark`` into ``fold``'s ``DatasetDict(train, validation, test)``.

    * train = the sources' rows of ``benchmark["train"]``;
    * validation = the sources' rows of ``benchmark["validation"]`` (threshold and checkpoint
      selection; the target is never seen before the test);
    * test = the targets' rows of ``benchmark["test"]``, with ``fold.missing_modalities`` set to
      ``None`` in every row (also in validation when ``missing_in_validation``).

    Rows are selected with ``Dataset.filter`` on the ``domain`` column only (batched; images are not
    decoded, and a ``set_transform`` decoder on the benchmark is kept on the result). Raises
    ``ValueError`` for an unknown domain (listing the available ones), a missing split or column, an
    empty split, or a validation split with a single class (no threshold can be fixed on it).
    """
    import datasets  # the protocol definitions above work without datasets

    if not isinstance(fold, Fold):
        raise ValueError(f"build_fold: fold must be a Fold, got {type(fold).__name__}")  # noqa: TRY004
    if not isinstance(benchmark, datasets.DatasetDict):
        raise ValueError(  # noqa: TRY004
            f"build_fold: benchmark must be a datasets.DatasetDict, got {type(benchmark).__name__}")
    absent = [s for s in _SPLITS if s not in benchmark]
    if absent:
        raise ValueError(f"build_fold: benchmark lacks split(s) {absent}; it has {list(benchmark)}")
    raw = {}
    for split in _SPLITS:
        ds = benchmark[split]
        for col in ("domain", "label"):
            if col not in ds.column_names:
                raise ValueError(
                    f"build_fold: split {split!r} has no {col!r} column (columns {ds.column_names})")
        raw[split] = ds.with_format(None)  # filter on raw values, never through an image-decoding transform

    present = {split: Counter(raw[split]["domain"]) for split in _SPLITS}
    available = sorted(set().union(*present.values()))
    unknown = [d for d in fold.domains if d not in available]
    if unknown:
        raise ValueError(
            f"build_fold({fold.name}): unknown domain(s) {unknown}; the benchmark has {available}")

    wanted = {"train": fold.sources, "validation": fold.sources, "test": fold.targets}
    out = {}
    for split in _SPLITS:
        ds = raw[split]
        if split == "test" or (split == "validation" and missing_in_validation):
            ds = _blank_modalities(ds, fold.missing_modalities)
        n_wanted = sum(present[split][d] for d in wanted[split])
        if n_wanted == 0:
            raise ValueError(
                f"build_fold({fold.name}): split {split!r} is empty for domains {list(wanted[split])}; "
                f"that split holds rows per domain {dict(sorted(present[split].items()))}")
        picked = ds.filter(_DomainIn(wanted[split]), input_columns="domain", batched=True,
                           keep_in_memory=True, desc=f"{fold.alias} {split}")
        if len(picked) != n_wanted:  # cannot happen unless the filter misbehaves; cheap to check
            raise ValueError(f"build_fold({fold.name}): {split} kept {len(picked)} rows, expected {n_wanted}")
        out[split] = picked

    labels = out["validation"]["label"]
    if len({int(x) for x in labels}) < 2:
        raise ValueError(
            f"build_fold({fold.name}): the validation split of sources {list(fold.sources)} has a single "
            f"class ({_labels_summary(labels)}); a decision threshold cannot be fixed on it")

    for split in _SPLITS:
        _restore_format(out[split], benchmark[split].format)
    return datasets.DatasetDict(out)
