"""Readers for the real MMDG benchmark, the file validation pass, and the training collator.

The MMDG benchmark (benchmark.md §1) has four domains with list files ``{D}-{train,val,test}.txt``:

* C (CeFA), S (CASIA-SURF), W (WMCA): ``rgb_path depth_path ir_path label`` per line;
* P (PADISI): ``xxxx.npz<TAB>label``; the ``.npz`` holds ``data[0]`` with channels 0-2 = RGB, 3 = IR,
  4 = Depth as floats in 0..1 (or, after export, ``<root>/<npz-stem>/{color,depth,ir}.jpg``).

`load_mmdg_benchmark` reads them into the package's data contract (schema.md): a ``DatasetDict`` with
splits train / validation / test holding all domains, columns ``rgb``, ``depth``, ``ir``, ``label``
(ClassLabel spoof/live), ``domain``, ``attack_type``, ``subject_id``, ``video_id``. Images are decoded
lazily: the image columns store file paths (strings) and a ``set_transform`` decoder turns them into
PIL images when rows are read (``ds.with_format(None)`` shows the paths). A ``.npz`` path means "this
modality's channels of that PADISI array".

Path rules: every domain has a documented default rule ``(data_root, entry) -> dict`` (see
:func:`default_path_rule_cefa` etc.), replaceable with ``path_rules={"W": my_rule}``. A rule returns
``{"rgb": path, "depth": path, "ir": path}`` (absolute, or relative to ``data_root``; ``None`` for a
missing modality) and may add ``"video_id"``, ``"subject_id"``, ``"attack_type"`` overrides. Every
resolved path must lie inside ``data_root``.

Before training, :func:`validate_files` checks that every file exists and decodes, and either raises
(``validate="error"``), drops the bad rows (``"skip"``) or does nothing (``"off"``).

:class:`FasCollator` turns rows into the model's keyword inputs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

MODALITIES = ("rgb", "depth", "ir")
LABEL_NAMES = ("spoof", "live")
SPLIT_FILES = {"train": "train", "validation": "val", "test": "test"}
NPZ_DOMAINS = frozenset({"P"})
# Channels of a PADISI ``data[0]`` array, per modality (benchmark.md §1).
NPZ_CHANNELS = {"rgb": (0, 1, 2), "ir": (3,), "depth": (4,)}
# Attack-type vocabulary used by the collator when none is given: "live" first, "spoof" (the real
# lists carry no attack type), the coarse types, then the synthetic benchmark's finer species. Append
# only: the integer codes are the positions in this tuple.
DEFAULT_ATTACK_TYPES = (
    "live",
    "spoof",
    "print",
    "replay",
    "mask",
    "partial",
    "print_cut",
    "print_wrap",
    "mask_rigid",
    "mask_silicone",
    "mask_paper",
    "mask_mannequin",
    "partial_funny",
    "partial_paperglasses",
)


# ---------------------------------------------------------------------------------------------- lists
@dataclass(frozen=True)
class ListEntry:
    """One line of an MMDG list file.

    Attributes:
        domain: domain letter ("C", "P", "S", "W", ...).
        paths: the path fields as written: ``(rgb, depth, ir)`` for triplet lists, ``(npz,)`` for PADISI.
        label: 1 = live, 0 = spoof.
        list_file: the list file it came from.
        line_number: 1-based line number in that file.
    """

    domain: str
    paths: tuple[str, ...]
    label: int
    list_file: str
    line_number: int

    @property
    def where(self) -> str:
        """``"<list file>:<line>"``, for messages."""
        return f"{self.list_file}:{self.line_number}"


def read_list_file(path: str | os.PathLike, domain: str, *, fmt: str | None = None) -> list[ListEntry]:
    """Read an MMDG list file into `ListEntry` rows (with 1-based line numbers).

    Accepts LF and CRLF line endings and a UTF-8 byte-order mark; blank lines are skipped. Fields are
    split on tabs when the line has one, otherwise on whitespace.

    Args:
        path: the list file.
        domain: the domain letter the rows belong to.
        fmt: ``"triplet"`` (``rgb depth ir label``) or ``"npz"`` (``file.npz<TAB>label``); by default
            ``"npz"`` for the domains in `NPZ_DOMAINS` (P) and ``"triplet"`` otherwise.

    Raises:
        FileNotFoundError: the list file does not exist.
        ValueError: a line with the wrong number of fields or an unknown label (names file and line).
    """
    path = os.fspath(path)
    fmt = fmt or ("npz" if domain in NPZ_DOMAINS else "triplet")
    if fmt not in ("triplet", "npz"):
        raise ValueError(f"fmt must be 'triplet' or 'npz', got {fmt!r}")
    n_fields = 4 if fmt == "triplet" else 2
    layout = "rgb_path depth_path ir_path label" if fmt == "triplet" else "npz_path<TAB>label"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"list file not found: {path}")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        text = handle.read()
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
        fields = [f for f in fields if f]
        if len(fields) != n_fields:
            raise ValueError(
                f"{path}:{number}: expected {n_fields} fields ({layout}) for domain {domain!r}, "
                f"got {len(fields)}: {line!r}"
            )
        label_text = fields[-1]
        if label_text not in ("0", "1"):
            raise ValueError(
                f"{path}:{number}: unknown label {label_text!r} (expected 0 = spoof or 1 = live)"
            )
        entries.append(ListEntry(domain, tuple(fields[:-1]), int(label_text), path, number))
    return entries


# ---------------------------------------------------------------------------------------------- path rules
def _join(data_root: str, path: str) -> str:
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(data_root, path))


def _swap_dir(path: str, old: str, new: str) -> str:
    """Replace the last ``/old/`` directory component of ``path`` by ``new``."""
    parts = path.replace("\\", "/").split("/")
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == old:
            parts[k] = new
            return "/".join(parts)
    return path


def _triplet_rule(data_root: str, entry: ListEntry, rgb_dir: str) -> dict[str, str | None]:
    rgb, depth, ir = entry.paths
    out = {"rgb": _join(data_root, rgb)}
    for modality, column in (("depth", depth), ("ir", ir)):
        if column in ("-", "None", "none") or column == rgb:
            derived = _swap_dir(rgb, rgb_dir, modality)
            out[modality] = _join(data_root, derived) if derived != rgb else None
        else:
            out[modality] = _join(data_root, column)
    return out


def default_path_rule_cefa(data_root: str, entry: ListEntry) -> dict[str, str | None]:
    """Default path rule for C (CeFA): ``.../<video>/profile/<frame>.jpg`` with depth/IR in ``depth``/``ir``.

    Each list column is joined to ``data_root`` when relative (absolute paths are kept and must lie inside
    ``data_root``). A depth or IR column that is ``-`` or repeats the RGB path is derived from the RGB
    path by replacing its ``profile`` directory with ``depth`` / ``ir``.
    """
    return _triplet_rule(data_root, entry, "profile")


def default_path_rule_surf(data_root: str, entry: ListEntry) -> dict[str, str | None]:
    """Default path rule for S (CASIA-SURF, official CROP release): ``.../color/<frame>.jpg``.

    As :func:`default_path_rule_cefa`, with ``color`` -> ``depth`` / ``ir`` for derived columns.
    """
    return _triplet_rule(data_root, entry, "color")


def default_path_rule_wmca(data_root: str, entry: ListEntry) -> dict[str, str | None]:
    """Default path rule for W (WMCA): ``<root>/<video>/{color,depth,ir}/<frame>.jpg``.

    As :func:`default_path_rule_cefa`, with ``color`` -> ``depth`` / ``ir`` for derived columns.
    """
    return _triplet_rule(data_root, entry, "color")


def default_path_rule_padisi(data_root: str, entry: ListEntry) -> dict[str, str | None]:
    """Default path rule for P (PADISI): the ``.npz`` itself, or its exported JPEGs.

    If ``<root>/<npz path>`` is a file, all three modalities point at it (the decoder takes channels
    0-2 for RGB, 3 for IR, 4 for Depth). Otherwise, if the exported layout
    ``<root>/<npz path without .npz>/color.jpg`` exists, the rule returns that folder's ``color.jpg``,
    ``depth.jpg`` and ``ir.jpg``. Otherwise it returns the ``.npz`` path (reported missing by validation).
    """
    (npz,) = entry.paths
    full = _join(data_root, npz)
    stem = full[: -len(".npz")] if full.lower().endswith(".npz") else full
    if not os.path.isfile(full) and os.path.isfile(os.path.join(stem, "color.jpg")):
        return {m: os.path.join(stem, f"{'color' if m == 'rgb' else m}.jpg") for m in MODALITIES}
    return {m: full for m in MODALITIES}


DEFAULT_PATH_RULES: dict[str, Callable[[str, ListEntry], dict]] = {
    "C": default_path_rule_cefa,
    "P": default_path_rule_padisi,
    "S": default_path_rule_surf,
    "W": default_path_rule_wmca,
}


def make_prefix_rule(old_prefix: str, new_prefix: str = "", base: Callable | None = None) -> Callable:
    """Build a path rule that rewrites list paths starting with ``old_prefix`` (e.g. the authors' drive).

    The returned rule replaces ``old_prefix`` by ``new_prefix`` (relative to ``data_root`` when not
    absolute) in every path field, then applies ``base`` (default: the domain's default rule).
    Example: ``path_rules={"W": make_prefix_rule("/data/WMCA/", "")}``.
    """

    def rule(data_root: str, entry: ListEntry) -> dict:
        paths = tuple(
            new_prefix + p[len(old_prefix) :] if p.startswith(old_prefix) else p for p in entry.paths
        )
        rewritten = ListEntry(entry.domain, paths, entry.label, entry.list_file, entry.line_number)
        return (base or DEFAULT_PATH_RULES.get(entry.domain, default_path_rule_wmca))(data_root, rewritten)

    return rule


# ---------------------------------------------------------------------------------------------- video ids
_ANCHORS = {"C": ("profile", "depth", "ir"), "S": ("color", "depth", "ir"), "W": ("color", "depth", "ir")}


def video_id_from_path(domain: str, path: str) -> str:
    """Video id of a frame, ``"<domain>/<video path>"``, recovered from the list path by layout.

    * C (CeFA ``.../<video>/profile/<frame>.jpg``), S (SURF CROP ``.../<video>/color/<frame>.jpg``),
      W (WMCA ``<video>/color/<frame>.jpg``): the path up to the last modality directory
      (``profile``/``color``/``depth``/``ir``), e.g. ``"W/grandtest/100_03/color/2.jpg"`` ->
      ``"W/grandtest/100_03"``;
    * P (PADISI): one ``.npz`` per sample, so the path without ``.npz`` (or, for an exported
      ``<stem>/color.jpg``, the folder);
    * anything else: the file's folder.

    Backslashes become ``/``, leading ``./`` and ``/`` are dropped, so ids do not depend on the OS.
    """
    norm = path.replace("\\", "/")
    while norm.startswith("./"):
        norm = norm[2:]
    norm = norm.lstrip("/")
    parts = norm.split("/")
    if domain in NPZ_DOMAINS and norm.lower().endswith(".npz"):
        video = norm[: -len(".npz")]
    elif (
        domain in NPZ_DOMAINS
        and len(parts) >= 2
        and parts[-1].lower() in ("color.jpg", "depth.jpg", "ir.jpg")
    ):
        video = "/".join(parts[:-1])
    else:
        anchors = _ANCHORS.get(domain, ("color", "profile", "depth", "ir"))
        cut = next((k for k in range(len(parts) - 2, -1, -1) if parts[k] in anchors), None)
        video = "/".join(parts[:cut]) if cut else "/".join(parts[:-1])
    return f"{domain}/{video or parts[-1]}"


# ---------------------------------------------------------------------------------------------- decoding
def _check_channels(image: Image.Image, modality: str, path: str) -> None:
    """Raise ValueError when an image's mode does not fit its modality (names the file)."""
    bands = len(image.getbands())
    if modality == "rgb":
        if image.mode not in ("RGB", "L"):
            raise ValueError(
                f"{path}: RGB image has mode {image.mode!r} ({bands} channels); expected RGB or L"
            )
    elif image.mode not in ("L", "RGB", "I;16", "I;16L", "I;16B"):
        raise ValueError(
            f"{path}: {modality} map has mode {image.mode!r} ({bands} channels); expected 1 channel "
            "(L or I;16) or 3 (RGB)"
        )


def _load_npz_array(path: str) -> np.ndarray:
    """Load ``data[0]`` of a PADISI ``.npz`` as an ``(H, W, 5)`` float array in 0..1 (no pickle)."""
    with np.load(path, allow_pickle=False) as arrays:
        keys = list(arrays.files)
        if "data" in keys:
            data = arrays["data"]
        elif len(keys) == 1:
            data = arrays[keys[0]]
        else:
            raise ValueError(f"{path}: expected an array named 'data' in the .npz, found {keys}")
    if data.ndim != 4:
        raise ValueError(f"{path}: expected data of shape (n, H, W, 5) or (n, 5, H, W), got {data.shape}")
    frame = data[0]
    if frame.shape[-1] == 5:
        pass
    elif frame.shape[0] == 5:
        frame = np.moveaxis(frame, 0, -1)
    else:
        raise ValueError(f"{path}: data[0] must have 5 channels (RGB, IR, Depth), got shape {frame.shape}")
    frame = frame.astype(np.float32)
    if not np.isfinite(frame).all():
        raise ValueError(f"{path}: data[0] contains NaN or infinite values")
    if frame.min() < -1e-3 or frame.max() > 1.0 + 1e-3:
        raise ValueError(
            f"{path}: data[0] must be floats in 0..1, got range [{frame.min():.4g}, {frame.max():.4g}]"
        )
    return frame


def _npz_to_images(frame: np.ndarray) -> dict[str, Image.Image]:
    as8 = np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)
    return {
        "rgb": Image.fromarray(np.ascontiguousarray(as8[..., 0:3]), mode="RGB"),
        "ir": Image.fromarray(np.ascontiguousarray(as8[..., 3]), mode="L"),
        "depth": Image.fromarray(np.ascontiguousarray(as8[..., 4]), mode="L"),
    }


def decode_row_images(paths: Mapping[str, str | None]) -> dict[str, Image.Image | None]:
    """Decode one row's ``{"rgb": path, "depth": path, "ir": path}`` into PIL images (None stays None).

    JPEG/PNG files are opened with Pillow and fully loaded; RGB comes out as mode RGB, depth and IR as
    they are stored (L, I;16 or RGB). A ``.npz`` path yields that modality's PADISI channels; a file
    shared by several modalities is read once.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a file does not decode, or has the wrong number of channels (names the file).
    """
    out: dict[str, Image.Image | None] = {}
    npz_cache: dict[str, dict[str, Image.Image]] = {}
    for modality in MODALITIES:
        path = paths.get(modality)
        if path is None:
            out[modality] = None
            continue
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{modality} file not found: {path}")
        if path.lower().endswith(".npz"):
            if path not in npz_cache:
                try:
                    npz_cache[path] = _npz_to_images(_load_npz_array(path))
                except (OSError, ValueError, EOFError) as err:
                    raise ValueError(f"{path}: cannot read PADISI .npz: {err}") from err
            out[modality] = npz_cache[path][modality]
            continue
        try:
            with Image.open(path) as image:
                image.load()
                decoded = image.copy()
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:
            raise ValueError(f"{path}: cannot decode {modality} image: {err}") from err
        _check_channels(decoded, modality, path)
        out[modality] = decoded.convert("RGB") if modality == "rgb" and decoded.mode != "RGB" else decoded
    return out


class MmdgImageDecoder:
    """``set_transform`` callable that replaces the path columns ``rgb``/``depth``/``ir`` by PIL images.

    Picklable (a module-level class), so it travels to DataLoader workers. Errors name the file.
    """

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        """Decode a batch (columns -> lists) of rows."""
        out = dict(batch)
        present = [m for m in MODALITIES if m in batch]
        if not present:
            return out
        n = len(batch[present[0]])
        decoded = [decode_row_images({m: batch[m][i] for m in present}) for i in range(n)]
        for m in present:
            out[m] = [row[m] for row in decoded]
        return out


# ---------------------------------------------------------------------------------------------- validation
@dataclass
class ValidationReport:
    """Result of :func:`validate_files`.

    Attributes:
        n_rows: rows checked.
        n_files: distinct files checked.
        missing: ``(where, path)`` for files that do not exist (where = ``list:line`` or ``row N``).
        unreadable: ``(where, path, reason)`` for files that exist but do not decode or have the wrong
            channel count / range.
        bad_rows: indices (into the checked rows) of rows with a missing or unreadable file.
        size_mismatch: ``(where, sizes)`` for rows whose modalities differ in size (a warning only).
    """

    n_rows: int = 0
    n_files: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)
    bad_rows: list[int] = field(default_factory=list)
    size_mismatch: list[tuple[str, str]] = field(default_factory=list)
    max_listed: int = 5

    @property
    def ok(self) -> bool:
        """True when nothing is missing or unreadable."""
        return not self.missing and not self.unreadable

    def __str__(self) -> str:
        lines = [
            f"Validated {self.n_rows} rows ({self.n_files} files): {len(self.missing)} missing, "
            f"{len(self.unreadable)} unreadable, {len(self.bad_rows)} bad rows"
            + (f", {len(self.size_mismatch)} rows with modality size mismatch" if self.size_mismatch else "")
            + "."
        ]
        if self.missing:
            lines.append(f"  missing (first {min(self.max_listed, len(self.missing))}):")
            lines += [f"    {where}: {path}" for where, path in self.missing[: self.max_listed]]
        if self.unreadable:
            lines.append(f"  unreadable (first {min(self.max_listed, len(self.unreadable))}):")
            lines += [
                f"    {where}: {path} ({reason})"
                for where, path, reason in self.unreadable[: self.max_listed]
            ]
        if self.size_mismatch:
            lines.append(f"  size mismatch (first {min(self.max_listed, len(self.size_mismatch))}):")
            lines += [f"    {where}: {sizes}" for where, sizes in self.size_mismatch[: self.max_listed]]
        return "\n".join(lines)


class DataValidationError(ValueError):
    """Raised by the validation pass in ``"error"`` mode; ``.report`` holds the `ValidationReport`."""

    def __init__(self, report: ValidationReport):
        super().__init__(str(report))
        self.report = report


def _check_file(path: str, modality: str, check: str) -> tuple[str | None, tuple[int, int] | None]:
    """Return (error reason or None, (width, height) or None) for one file and modality."""
    if check == "exists":
        return None, None
    if path.lower().endswith(".npz"):
        try:
            frame = _load_npz_array(path)
        except (OSError, ValueError, EOFError) as err:
            return str(err), None
        return None, (frame.shape[1], frame.shape[0])
    try:
        with Image.open(path) as image:
            if check == "decode":
                image.load()
            else:
                image.verify()
            _check_channels(image, modality, path)
            return None, image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return str(err).replace(path + ": ", ""), None


def _rows_from(data) -> tuple[list[dict], list[str]]:
    """Rows (modality -> path) and their 'where' strings from a Dataset, DatasetDict, entries or dicts."""
    import datasets

    if isinstance(data, datasets.DatasetDict):
        rows, wheres = [], []
        for split, ds in data.items():
            r, w = _rows_from(ds)
            rows += r
            wheres += [f"{split} {x}" for x in w]
        return rows, wheres
    if isinstance(data, datasets.Dataset):
        raw = data.with_format(None)
        cols = {m: raw[m] if m in raw.column_names else [None] * len(raw) for m in MODALITIES}
        for m, values in cols.items():
            if values and not all(v is None or isinstance(v, str) for v in values):
                raise ValueError(
                    f"validate_files needs path columns; column {m!r} holds decoded images "
                    "(validate before decoding, or pass the rows' paths)"
                )
        return [{m: cols[m][i] for m in MODALITIES} for i in range(len(raw))], [
            f"row {i}" for i in range(len(raw))
        ]
    rows, wheres = [], []
    for i, item in enumerate(data):
        if isinstance(item, Mapping):
            rows.append({m: item.get(m) for m in MODALITIES})
            wheres.append(str(item.get("where", f"row {i}")))
        else:
            raise ValueError(
                f"validate_files: row {i} must be a mapping of modality -> path, got {type(item).__name__}"
            )
    return rows, wheres


def validate_files(
    dataset_or_rows,
    mode: str = "error",
    *,
    check: str = "decode",
    progress: bool = False,
    max_listed: int = 5,
) -> ValidationReport:
    """Check that every image file of a benchmark exists and decodes, before any training.

    Args:
        dataset_or_rows: a ``Dataset`` / ``DatasetDict`` from :func:`load_mmdg_benchmark` (its path
            columns are read), or an iterable of mappings ``{"rgb": path, "depth": path, "ir": path}``
            (optionally with ``"where"`` for messages, e.g. ``"W-train.txt:12"``).
        mode: ``"error"`` raises `DataValidationError` (a ValueError) with the report when a file is
            missing or unreadable; ``"skip"`` returns the report (``bad_rows`` lists the rows to drop)
            and logs a warning; ``"off"`` checks nothing and returns an empty report.
        check: ``"decode"`` (default) fully decodes each file (catches truncated JPEGs), ``"header"``
            only parses headers, ``"exists"`` only tests existence.
        progress: show a tqdm progress bar.
        max_listed: how many first paths ``str(report)`` lists per category.

    Returns:
        `ValidationReport`.
    """
    if mode not in ("error", "skip", "off"):
        raise ValueError(f"mode must be 'error', 'skip' or 'off', got {mode!r}")
    if check not in ("decode", "header", "exists"):
        raise ValueError(f"check must be 'decode', 'header' or 'exists', got {check!r}")
    report = ValidationReport(max_listed=max_listed)
    if mode == "off":
        return report
    rows, wheres = _rows_from(dataset_or_rows)
    report.n_rows = len(rows)
    cache: dict[tuple[str, str], tuple[str | None, Any]] = {}
    iterator: Iterable = range(len(rows))
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="validating files", unit="row")
    for i in iterator:
        bad = False
        sizes = {}
        for modality in MODALITIES:
            path = rows[i][modality]
            if path is None:
                continue
            key = (path, modality)
            if key not in cache:
                if not os.path.isfile(path):
                    cache[key] = ("missing", None)
                else:
                    cache[key] = _check_file(path, modality, check)
            reason, size = cache[key]
            if reason == "missing":
                report.missing.append((wheres[i], path))
                bad = True
            elif reason is not None:
                report.unreadable.append((wheres[i], path, reason))
                bad = True
            elif size is not None:
                sizes[modality] = size
        if bad:
            report.bad_rows.append(i)
        elif len(set(sizes.values())) > 1:
            report.size_mismatch.append((wheres[i], str(sizes)))
    report.n_files = len({p for p, _ in cache})
    if not report.ok:
        if mode == "error":
            raise DataValidationError(report)
        logger.warning("skipping %d bad rows:\n%s", len(report.bad_rows), report)
    return report


# ---------------------------------------------------------------------------------------------- loader
def _inside(root: str, path: str) -> bool:
    root = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.abspath(path))
    return os.path.commonpath([root, path]) == root


def resolve_entry(
    data_root: str, entry: ListEntry, rule: Callable[[str, ListEntry], Mapping]
) -> dict[str, Any]:
    """Apply a path rule to one entry and build the schema row (paths as strings).

    Containment is checked on normalised absolute paths (``..`` cannot escape ``data_root``); symbolic
    links are not resolved, so folders inside ``data_root`` may be links to other disks.

    Raises:
        ValueError: the rule returns something else than a mapping with rgb/depth/ir, or a path outside
            ``data_root`` (names the list file and line).
    """
    try:
        resolved = rule(data_root, entry)
    except Exception as err:
        raise ValueError(
            f"{entry.where}: path rule {getattr(rule, '__name__', rule)!r} failed: {err}"
        ) from err
    if not isinstance(resolved, Mapping) or not set(MODALITIES) <= set(resolved):
        raise ValueError(
            f"{entry.where}: a path rule must return a mapping with keys rgb, depth, ir; got {resolved!r}"
        )
    row: dict[str, Any] = {}
    for modality in MODALITIES:
        p = resolved[modality]
        if p is None:
            row[modality] = None
            continue
        p = _join(data_root, os.fspath(p))
        if not _inside(data_root, p):
            raise ValueError(f"{entry.where}: {modality} path {p!r} lies outside the data root {data_root!r}")
        row[modality] = p
    if all(row[m] is None for m in MODALITIES):
        raise ValueError(f"{entry.where}: the path rule resolved no modality")
    label = entry.label
    video = resolved.get("video_id") or video_id_from_path(entry.domain, entry.paths[0])
    row.update(
        label=label,
        domain=entry.domain,
        attack_type=str(resolved.get("attack_type") or ("live" if label == 1 else "spoof")),
        subject_id=str(resolved.get("subject_id") or video),
        video_id=str(video),
    )
    return row


def mmdg_features():
    """The ``datasets.Features`` of a benchmark as read from disk (image columns hold path strings)."""
    import datasets

    return datasets.Features(
        {
            "rgb": datasets.Value("string"),
            "depth": datasets.Value("string"),
            "ir": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(LABEL_NAMES)),
            "domain": datasets.Value("string"),
            "attack_type": datasets.Value("string"),
            "subject_id": datasets.Value("string"),
            "video_id": datasets.Value("string"),
        }
    )


def load_mmdg_benchmark(
    data_root: str | os.PathLike,
    list_dir: str | os.PathLike,
    domains: Sequence[str] = ("C", "P", "S", "W"),
    *,
    path_rules: Mapping[str, Callable[[str, ListEntry], Mapping]] | None = None,
    validate: str = "error",
    check: str = "decode",
    progress: bool = True,
):
    """Read the real MMDG benchmark into a ``DatasetDict`` (train / validation / test, all domains).

    Args:
        data_root: folder holding the images (every resolved path must lie inside it).
        list_dir: folder holding ``{D}-{train,val,test}.txt``.
        domains: domain letters to read.
        path_rules: per-domain overrides of `DEFAULT_PATH_RULES`, e.g. ``{"W": my_rule}``; a rule is
            ``(data_root, ListEntry) -> {"rgb": path, "depth": path, "ir": path, ...}``.
        validate: ``"error"`` (default) raise `DataValidationError` listing missing / unreadable files;
            ``"skip"`` drop those rows with a warning; ``"off"`` no check (a bad file then fails when
            its row is read, with an error naming it).
        check: what validation does per file: ``"decode"``, ``"header"`` or ``"exists"``.
        progress: show progress bars while validating.

    Returns:
        ``datasets.DatasetDict`` whose rows hold PIL images under ``rgb``/``depth``/``ir`` (decoded on
        access by `MmdgImageDecoder`), ``label`` (0 spoof / 1 live), ``domain``, ``attack_type``
        (``"live"`` or ``"spoof"``: the lists carry no attack type), ``subject_id`` (the video id: the
        lists carry no subject), ``video_id`` (see :func:`video_id_from_path`). The validation reports
        are kept in the ``validation_reports`` attribute of the returned object (split -> report).

    Raises:
        FileNotFoundError: a list file or ``data_root`` is missing.
        ValueError: a bad list line, a path outside the root, an empty split, or (``validate="error"``)
            missing or unreadable files.
    """
    import datasets

    data_root = os.path.abspath(os.fspath(data_root))
    list_dir = os.fspath(list_dir)
    if not os.path.isdir(data_root):
        raise FileNotFoundError(f"data_root is not a folder: {data_root}")
    if validate not in ("error", "skip", "off"):
        raise ValueError(f"validate must be 'error', 'skip' or 'off', got {validate!r}")
    rules = dict(DEFAULT_PATH_RULES)
    for domain, rule in (path_rules or {}).items():
        if not callable(rule):
            raise ValueError(f"path_rules[{domain!r}] must be a callable (data_root, entry) -> paths")
        rules[domain] = rule
    unknown = [d for d in domains if d not in rules]
    if unknown:
        raise ValueError(f"no path rule for domains {unknown}; pass path_rules={{'{unknown[0]}': rule}}")

    splits, reports = {}, {}
    for split, suffix in SPLIT_FILES.items():
        rows, wheres = [], []
        for domain in domains:
            list_file = os.path.join(list_dir, f"{domain}-{suffix}.txt")
            entries = read_list_file(list_file, domain)
            if not entries:
                raise ValueError(f"{list_file}: empty list (split {split!r}, domain {domain!r})")
            for entry in entries:
                rows.append(resolve_entry(data_root, entry, rules[domain]))
                wheres.append(entry.where)
        report = validate_files(
            [{**{m: r[m] for m in MODALITIES}, "where": w} for r, w in zip(rows, wheres, strict=True)],
            mode="skip" if validate == "skip" else ("off" if validate == "off" else "error"),
            check=check,
            progress=progress,
        )
        reports[split] = report
        if report.bad_rows:
            bad = set(report.bad_rows)
            rows = [r for i, r in enumerate(rows) if i not in bad]
            warnings.warn(f"split {split!r}: dropped {len(bad)} rows with bad files\n{report}", stacklevel=2)
            if not rows:
                raise ValueError(f"split {split!r} is empty after dropping rows with bad files\n{report}")
        table = {k: [r[k] for r in rows] for k in mmdg_features()}
        ds = datasets.Dataset.from_dict(table, features=mmdg_features(), split=split)
        ds.set_transform(MmdgImageDecoder(), output_all_columns=False)
        splits[split] = ds
    dsd = datasets.DatasetDict(splits)
    dsd.validation_reports = reports
    return dsd


# ---------------------------------------------------------------------------------------------- collator
def video_id_code(video_id: str) -> int:
    """Stable 62-bit integer code of a video id (blake2b), used when the collator has no vocabulary."""
    return int.from_bytes(hashlib.blake2b(video_id.encode("utf-8"), digest_size=8).digest(), "big") >> 2


class FasCollator:
    """Turn dataset rows into the model's keyword inputs.

    Output (all tensors): ``pixel_values``, ``depth_pixel_values``, ``ir_pixel_values`` (float
    ``(b, 3, H, W)``, normalised, missing ones filled), ``modality_mask`` (bool ``(b, 3)``, rgb/depth/ir),
    ``labels`` (long ``(b,)``, 1 = live) and, when ``return_metadata``, ``attack_type`` and ``video_id``
    (long ``(b,)``) for metrics. With ``domain_names`` it also returns ``domain_labels`` (long ``(b,)``: the
    index of each row's ``domain`` in ``domain_names``), the input MMDA's MD2A uses to reorganise a
    training batch; give it to the *training* collator only (the target domain is unknown at test time).

    Integer codes: ``attack_type`` is the index in ``attack_type_names`` (default
    `DEFAULT_ATTACK_TYPES`; use :meth:`from_dataset` to build it from the data: ``"live"`` first, then
    the other names sorted). ``video_id`` is the index in ``video_id_names`` when given (also built by
    :meth:`from_dataset`), otherwise the stable hash :func:`video_id_code`. The vocabularies are fixed at
    construction, so every DataLoader worker codes alike; an unknown name raises ValueError.

    Pipeline: images -> ``processor(..., do_normalize=False)`` (0..1) -> ``augmentation`` (if any) ->
    ``processor.normalize_modalities`` (normalise, fill missing).

    Args:
        processor: a :class:`~modeling_bigmoe.image_processing_bigmoe.BigMoeImageProcessor`.
        augmentation: an optional :class:`~modeling_bigmoe.augmentation.FasAugmentation` (training only).
        modalities: the modalities read from the rows; the others are passed as missing.
        drop_modalities: modalities removed at test time (Protocol 2: e.g. ``("depth",)``).
        attack_type_names: the attack-type vocabulary (a list; ``"live"`` should be included).
        video_id_names: optional video-id vocabulary.
        return_metadata: include ``attack_type`` and ``video_id`` in the output.
        domain_names: optional domain vocabulary; when given, ``domain_labels`` is returned.
    """

    def __init__(
        self,
        processor,
        augmentation: Callable | None = None,
        modalities: Sequence[str] = MODALITIES,
        drop_modalities: Sequence[str] = (),
        *,
        attack_type_names: Sequence[str] | None = None,
        video_id_names: Sequence[str] | None = None,
        return_metadata: bool = True,
        domain_names: Sequence[str] | None = None,
    ):
        for name, values in (("modalities", modalities), ("drop_modalities", drop_modalities)):
            bad = [m for m in values if m not in MODALITIES]
            if bad or isinstance(values, str):
                raise ValueError(f"{name} must be a tuple drawn from {MODALITIES}, got {values!r}")
        self.processor = processor
        self.augmentation = augmentation
        self.modalities = tuple(modalities)
        self.drop_modalities = tuple(drop_modalities)
        self.active = tuple(m for m in MODALITIES if m in self.modalities and m not in self.drop_modalities)
        if not self.active:
            raise ValueError(
                f"no modality left: modalities={modalities!r}, drop_modalities={drop_modalities!r}"
            )
        self.attack_type_names = list(attack_type_names or DEFAULT_ATTACK_TYPES)
        if len(set(self.attack_type_names)) != len(self.attack_type_names):
            raise ValueError(f"attack_type_names has duplicates: {self.attack_type_names}")
        self.attack_type_to_id = {n: i for i, n in enumerate(self.attack_type_names)}
        self.video_id_names = list(video_id_names) if video_id_names is not None else None
        self.video_id_to_code = (
            {n: i for i, n in enumerate(self.video_id_names)} if self.video_id_names is not None else None
        )
        self.return_metadata = bool(return_metadata)
        if isinstance(domain_names, str):
            raise ValueError(f"domain_names must be a list of domain names, got the string {domain_names!r}")
        self.domain_names = list(domain_names) if domain_names is not None else None
        if self.domain_names is not None and len(set(self.domain_names)) != len(self.domain_names):
            raise ValueError(f"domain_names has duplicates: {self.domain_names}")
        self.domain_to_id = {n: i for i, n in enumerate(self.domain_names)} if self.domain_names is not None else None

    @classmethod
    def from_dataset(cls, processor, dataset, *, with_video_vocabulary: bool = True, **kwargs) -> FasCollator:
        """Build a collator whose vocabularies cover ``dataset`` (a Dataset or DatasetDict).

        ``attack_type_names`` = ``"live"`` then the other attack types, sorted; ``video_id_names`` = the
        sorted video ids (when ``with_video_vocabulary``). Only the string columns are read.
        """
        import datasets

        parts = list(dataset.values()) if isinstance(dataset, datasets.DatasetDict) else [dataset]
        attacks, videos = set(), set()
        for ds in parts:
            raw = ds.with_format(None)
            attacks.update(raw["attack_type"])
            if with_video_vocabulary:
                videos.update(raw["video_id"])
        names = ["live"] + sorted(attacks - {"live"})
        kwargs.setdefault("attack_type_names", names)
        if with_video_vocabulary:
            kwargs.setdefault("video_id_names", sorted(videos))
        return cls(processor, **kwargs)

    def _code(self, value, vocab: dict | None, field_name: str, index: int) -> int:
        if vocab is None:
            return video_id_code(str(value))
        if value not in vocab:
            raise ValueError(
                f"row {index}: {field_name} {value!r} is not in the collator's vocabulary "
                f"({len(vocab)} names); pass {field_name}_names or build the collator with "
                "FasCollator.from_dataset"
            )
        return vocab[value]

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Collate a list of rows (dicts with rgb/depth/ir images, label, attack_type, video_id)."""
        if not rows:
            raise ValueError("FasCollator got an empty batch")
        images = {m: [row.get(m) if m in self.active else None for row in rows] for m in MODALITIES}
        labels = []
        for i, row in enumerate(rows):
            if "label" not in row:
                raise ValueError(f"row {i}: no 'label' field (keys {sorted(row)})")
            label = row["label"]
            if label not in (0, 1):
                raise ValueError(f"row {i}: label must be 0 (spoof) or 1 (live), got {label!r}")
            labels.append(int(label))
        features = self.processor(
            images=images["rgb"],
            depth_images=images["depth"],
            ir_images=images["ir"],
            do_normalize=False,
            return_tensors="pt",
        )
        features = dict(features)
        if self.augmentation is not None:
            features = self.augmentation(features)
        out = dict(self.processor.normalize_modalities(features, return_tensors="pt"))
        out["labels"] = torch.tensor(labels, dtype=torch.long)
        if self.return_metadata:
            out["attack_type"] = torch.tensor(
                [
                    self._code(row.get("attack_type"), self.attack_type_to_id, "attack_type", i)
                    for i, row in enumerate(rows)
                ],
                dtype=torch.long,
            )
            out["video_id"] = torch.tensor(
                [
                    self._code(row.get("video_id"), self.video_id_to_code, "video_id", i)
                    for i, row in enumerate(rows)
                ],
                dtype=torch.long,
            )
        if self.domain_to_id is not None:
            codes = []
            for i, row in enumerate(rows):
                if "domain" not in row:
                    raise ValueError(f"row {i}: no 'domain' field, needed for domain_labels (keys {sorted(row)})")
                codes.append(self._code(row["domain"], self.domain_to_id, "domain", i))
            out["domain_labels"] = torch.tensor(codes, dtype=torch.long)
        return out


__all__ = [
    "DEFAULT_ATTACK_TYPES",
    "DEFAULT_PATH_RULES",
    "DataValidationError",
    "FasCollator",
    "ListEntry",
    "MmdgImageDecoder",
    "ValidationReport",
    "decode_row_images",
    "default_path_rule_cefa",
    "default_path_rule_padisi",
    "default_path_rule_surf",
    "default_path_rule_wmca",
    "load_mmdg_benchmark",
    "make_prefix_rule",
    "mmdg_features",
    "read_list_file",
    "resolve_entry",
    "validate_files",
    "video_id_code",
]
