"""CSV / TSV data sets: rows -> records (several rows naming one image are one record with several captions)."""
from __future__ import annotations

import csv
import io
import json
import os

from ..errors import DatasetError
from .locations import exists, join_url, open_binary, parent_url, read_text
from .records import Record
from .shards import SampleFields, is_index

__all__ = ["CSV_IMAGE_COLUMNS", "CSV_CAPTION_COLUMNS", "read_csv_records", "default_csv_label"]

CSV_IMAGE_COLUMNS = ("filepath", "image", "image_path", "path", "file", "url")
CSV_CAPTION_COLUMNS = ("caption", "title", "text", "txt")


def read_csv_records(path: str, img_key: "str | None" = None, caption_key: "str | None" = None,
                     label_key: "str | None" = None, separator: "str | None" = None,
                     classnames: "list[str] | None" = None) -> tuple[list[Record], "list[str] | None"]:
    """Rows of a CSV/TSV -> records; rows naming the same image are one record with several captions.

    ``img_key`` / ``caption_key`` left out: the first of :data:`CSV_IMAGE_COLUMNS` /
    :data:`CSV_CAPTION_COLUMNS` present (no caption column is fine then); a named column must exist.
    Relative image paths are resolved against the CSV's folder. A label column of class names
    is mapped through ``classnames`` (or, when none are given, the sorted distinct names).
    """
    if separator is None:
        separator = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise DatasetError(f"CSV file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read CSV file {path!r}: {err}") from None
    reader = csv.DictReader(io.StringIO(text), delimiter=separator, strict=True)  # an unterminated quote: an error
    try:
        return _parse(reader, path, img_key, caption_key, label_key, separator, classnames)
    except csv.Error as err:  # a field over csv's size limit, a stray quote (strict)
        raise DatasetError(f"{path}:{reader.line_num}: not readable as CSV ({err})") from None


def _parse(reader: csv.DictReader, path: str, img_key: "str | None", caption_key: "str | None",
           label_key: "str | None", separator: str, classnames: "list[str] | None"
           ) -> tuple[list[Record], "list[str] | None"]:
    """Records and class names from the CSV ``reader`` is reading (its header first)."""
    columns = _first_wins(reader)
    if img_key is None:  # not named: the usual names (open_clip's "filepath" first)
        img_key = next((c for c in CSV_IMAGE_COLUMNS if c in columns), "filepath")
    if caption_key is None:  # optional unless named
        caption_key = next((c for c in CSV_CAPTION_COLUMNS if c in columns), None)
    for key, flag in ((img_key, "--img-key"), (caption_key, "--caption-key"), (label_key, "--label-key")):
        if key is not None and key not in columns:
            sep_name = "tab" if separator == "\t" else repr(separator)
            raise DatasetError(f"CSV file {path!r} has no column {key!r} (columns: {', '.join(columns) or 'none'}; "
                               f"separator {sep_name}); name the right column with {flag}")
    records, raw_labels = _rows(reader, path, img_key, caption_key, label_key)
    names = classnames
    if label_key is not None:
        by_name = not all(is_index(v) for v in raw_labels)  # a column mixing names and digits: all names
        if by_name and names is None:
            names = sorted(set(raw_labels))
        fields = SampleFields(classnames=names)
        for rec, value in zip(records, raw_labels):
            if value == "":
                raise DatasetError(f"{path}:{rec.meta['line']}: empty {label_key!r} cell")
            rec.label = fields.label_of(value, f"{path}:{rec.meta['line']}", by_name=by_name)
    return records, names


def _first_wins(reader: csv.DictReader) -> list[str]:
    """The header's column names, a repeated name renamed ``name.1``, ``name.2`` … as pandas (so open_clip's
    CsvDataset) does: the first column of a name is the one read (DictReader kept the last)."""
    names: list[str] = []
    for name in reader.fieldnames or []:
        new, n = name, 0
        while new in names:
            n += 1
            new = f"{name}.{n}"
        names.append(new)
    if names:
        reader.fieldnames = names
    return names


def _check_cells(row: dict, line: int, path: str, width: int) -> None:
    """A row with more or fewer cells than the header is an error (csv's DictReader filled or set aside the
    difference without a word, so a caption holding an unquoted comma was cut), as pandas refuses it."""
    extra = row.get(None)
    cells = width + len(extra) if extra else sum(v is not None for v in row.values())
    if cells != width:
        hint = "quote fields holding the separator" if cells > width else "every row needs a cell for each column"
        raise DatasetError(f"{path}:{line}: {cells} cell{'s' * (cells != 1)} but the header has {width} ({hint})")


def _rows(reader: csv.DictReader, path: str, img_key: str, caption_key: "str | None",
          label_key: "str | None") -> tuple[list[Record], list[str]]:
    """The records of a CSV's rows (one per image, its captions gathered) and each record's raw label."""
    base = parent_url(path) or ""
    by_image: dict[str, Record] = {}
    raw_labels: list[str] = []
    for line, row in enumerate(reader, start=2):
        _add_row(row, line, path, base, img_key, caption_key, label_key, by_image, raw_labels)
    return list(by_image.values()), raw_labels


def _add_row(row: dict, line: int, path: str, base: str, img_key: str, caption_key: "str | None",
             label_key: "str | None", by_image: dict[str, Record], raw_labels: list[str]) -> None:
    _check_cells(row, line, path, len(row) - (None in row))
    image = (row.get(img_key) or "").strip()
    if not image:
        raise DatasetError(f"{path}:{line}: empty {img_key!r} cell")
    if "://" not in image and not os.path.isabs(image):
        image = join_url(base, image) if base else image
    rec = by_image.get(image)
    label = (row.get(label_key) or "").strip() if label_key is not None else ""
    if rec is None:
        rec = by_image[image] = Record(key=os.path.basename(image).rsplit(".", 1)[0], image=image, source=image)
        rec.meta["line"], rec.meta["row"] = line, len(by_image) - 1
        if label_key is not None:
            raw_labels.append(label)
    elif label_key is not None and label != raw_labels[rec.meta["row"]]:  # the later label was dropped silently
        raise DatasetError(f"{path}:{line}: image {image!r} has label {label!r} here but "
                           f"{raw_labels[rec.meta['row']]!r} on line {rec.meta['line']}; an image has one label "
                           "(the captions of its rows are gathered)")
    if caption_key is not None and (row.get(caption_key) or "").strip():
        rec.captions.append(row[caption_key].strip())


def default_csv_label(path: str, folder: str, separator: "str | None") -> "str | None":
    """A label column when none is named: the shapes manifest's label key, else label / class / cls."""
    if separator is None:
        separator = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    try:
        with open_binary(path) as fh:
            header = next(csv.reader([fh.readline().decode("utf-8-sig")], delimiter=separator), [])
    except (OSError, UnicodeDecodeError):
        return None  # read_csv_records reports the problem
    manifest = join_url(folder, "manifest.json")
    if exists(manifest):
        try:
            key = json.loads(read_text(manifest)).get("params", {}).get("label_key")
        except ValueError:
            key = None
        if key in header:
            return key
    return next((c for c in ("label", "class", "cls") if c in header), None)
