"""JSON files of the datasets: parsing and shape/finiteness checks with one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from contra.data.errors import DataFormatError, MissingFileError


def read_json(path: Path) -> Any:
    """Parse a JSON file; missing or malformed files raise one-line errors naming the file."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise MissingFileError(f"{path}: file is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: unreadable ({type(e).__name__})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except ValueError:  # json's other refusal: an integer longer than Python converts
        raise DataFormatError(f"{path}: malformed JSON: a number with more than "
                              f"{sys.get_int_max_str_digits()} digits") from None
    except RecursionError:
        raise DataFormatError(f"{path}: malformed JSON: arrays or objects nested too "
                              f"deeply") from None


def _shape_str(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))


def checked_array(value: Any, path: Path, what: str, shape: tuple[int, ...],
                  squeeze_leading: bool = False) -> np.ndarray:
    """``value`` as a finite float64 array of ``shape``, else a one-line DataFormatError.

    ``what`` names the value in messages (``"field 'K'[3]"``).  ``squeeze_leading`` accepts extra
    leading singleton axes (the nested 1×48 / 1×1×3 storage) and drops them.
    """
    try:
        arr = np.asarray(value)
    except ValueError:
        raise DataFormatError(f"{path}: {what} is ragged, expected shape "
                              f"{_shape_str(shape)}") from None
    if arr.dtype.kind not in "iuf":
        raise DataFormatError(f"{path}: {what} is not numeric, expected shape "
                              f"{_shape_str(shape)}")
    lead = arr.shape[: max(arr.ndim - len(shape), 0)]
    if squeeze_leading and lead and all(d == 1 for d in lead) and arr.shape[len(lead):] == shape:
        arr = arr.reshape(arr.shape[len(lead):])
    if arr.shape != shape:
        raise DataFormatError(f"{path}: {what} has shape {_shape_str(arr.shape)}, "
                              f"expected {_shape_str(shape)}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise DataFormatError(f"{path}: {what} has non-finite values")
    return arr
