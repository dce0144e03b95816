"""What an official TIPS tower must hold before it is imported.

Every array a number array with finite values; blocks numbered 0..N-1; and exactly the arrays, of
exactly the shapes, that the model inferred from the towers has (`expected`, from
official.expected_arrays). The depth is read from the block numbers, so a tower short of a block in
the middle, or a block short of its MLP, would otherwise load as another model or fail with a long
load error; a weight that is NaN or Inf would give a model whose every output is NaN. Each failure
is a DataError naming the file and the array(s).
"""

import re
from collections.abc import Mapping

import numpy as np

from .errors import DataError

BLOCK_PREFIX = {"vision": "blocks", "text": "transformer.resblocks"}
_SHOWN = 8  # names listed in one message; the rest are counted


def _names(names) -> str:
    names = sorted(names, key=_order)
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(repr(n) for n in names[:_SHOWN]) + more


def _order(name: str):
    """Block arrays by block number (blocks.2 before blocks.10), the rest by name."""
    m = re.match(r"^(.*?)\.(\d+)\.(.*)$", name)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else (name, -1, "")


def check_values(label: str, arrays: Mapping) -> None:
    """Every array holds numbers (bool, integer or float) and no NaN or Inf."""
    for name, array in arrays.items():
        kind = np.asarray(array).dtype.kind
        if kind not in "biuf":
            raise DataError(f"{label}: array {name!r} holds {np.asarray(array).dtype}, not numbers")
        if kind == "f":
            finite = np.isfinite(array)
            if not finite.all():
                bad = finite.size - int(np.count_nonzero(finite))
                raise DataError(
                    f"{label}: array {name!r} holds {bad} non-finite values (NaN or Inf) of {finite.size}: "
                    "refusing to import weights that would make every output NaN"
                )


def check_blocks(label: str, arrays: Mapping, tower: str) -> None:
    """The tower's blocks are numbered 0..N-1, none missing."""
    prefix = BLOCK_PREFIX[tower]
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    found = sorted({int(m.group(1)) for k in arrays if (m := pattern.match(k))})
    if not found:
        raise DataError(f"{label}: no {prefix}.0. arrays: an official TIPS {tower} tower holds its transformer blocks")
    missing = sorted(set(range(found[-1] + 1)) - set(found))
    if missing:
        raise DataError(
            f"{label}: block(s) {', '.join(f'{prefix}.{i}' for i in missing)} missing from blocks 0..{found[-1]} "
            f"(the file holds {len(found)}): a tower short of a block would import as a shallower model"
        )


def check_layout(label: str, arrays: Mapping, expected: dict, tower: str, fields: dict) -> None:
    """The tower holds exactly the expected arrays, of the expected shapes."""
    depth = fields["depth"] if tower == "vision" else fields["text_depth"]
    mlp = f"{fields['mlp']} " if tower == "vision" else ""
    model = f"a {mlp}{tower} tower of width {fields['width']} with {depth} blocks"
    missing = set(expected) - set(arrays)
    if missing:
        raise DataError(f"{label}: missing array(s) {_names(missing)} ({model} holds them)")
    extra = set(arrays) - set(expected)
    if extra:
        raise DataError(f"{label}: array(s) {_names(extra)} not in the official layout ({model})")
    for name, shape in expected.items():
        if tuple(np.shape(arrays[name])) != shape:
            raise DataError(f"{label}: array {name!r} has shape {tuple(np.shape(arrays[name]))}; {model} needs {shape}")
