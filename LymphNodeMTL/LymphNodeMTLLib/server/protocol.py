"""The inference server's wire format, shared by the server and every client (docs/server-api.md).

One place defines how a CT is named (its content hash), how a CT travels (raw bytes plus three
headers), and how node masks and results become JSON, so the server, the stdlib client and the
Slicer module cannot drift apart. Stdlib + numpy only: the Slicer side imports it without torch.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import math
import re

import numpy as np

from ..core.errors import InputError
from ..core.model_identity import ModelIdentity
from ..core.node_result import NodeResult

API_VERSION = 1

# CT sample types the API accepts (X-LNM-Dtype); everything travels little-endian.
DTYPES = ("int16", "uint16", "int32", "float32", "float64")

HEADER_SHAPE = "X-LNM-Shape"
HEADER_DTYPE = "X-LNM-Dtype"
HEADER_IJK_TO_RAS = "X-LNM-IJK-To-RAS"
# What the three headers may hold, for the parser and the server's OpenAPI schema alike (the form
# volume_headers writes). A side of at most 6 digits keeps the byte count within int64.
_SIDE = "[1-9][0-9]{0,5}"
_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?"
HEADER_PATTERNS = {
    HEADER_SHAPE: f"^{_SIDE},{_SIDE},{_SIDE}$",
    HEADER_DTYPE: f"^({'|'.join(DTYPES)})$",
    HEADER_IJK_TO_RAS: f"^{_NUMBER}(?:,{_NUMBER}){{15}}$",
}

_FLOAT_FIELDS = tuple(
    f.name for f in dataclasses.fields(NodeResult) if f.type in ("float", float)
)


# --- the CT -------------------------------------------------------------------------------------
def _little_endian(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype.name not in DTYPES:
        raise InputError(
            f"CT sample type {image.dtype.name} is not supported; send one of {', '.join(DTYPES)}"
        )
    return np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<"))


def volume_id(image: np.ndarray, ijk_to_ras) -> str:
    """The CT's name on the server: sha256 hex over dtype name, shape, IJK->RAS and the samples.

    Geometry is part of the name, so the same samples placed elsewhere in patient space are a
    different CT (seeds are in RAS and would land elsewhere).
    """
    image = _little_endian(image)
    h = volume_hasher(image.dtype.name, image.shape, ijk_to_ras)
    h.update(memoryview(image.reshape(-1)).cast("B"))  # no copy of a large CT
    return h.hexdigest()


def volume_hasher(dtype_name: str, shape_kji, ijk_to_ras):
    """sha256 primed with volume_id's header part; feed it the samples' bytes (a streamed upload)."""
    matrix = np.ascontiguousarray(np.asarray(ijk_to_ras, dtype="<f8").reshape(4, 4))
    h = hashlib.sha256()
    h.update(dtype_name.encode("ascii"))
    h.update(np.asarray(shape_kji, dtype="<i8").tobytes())
    h.update(matrix.tobytes())
    return h


def volume_headers(image: np.ndarray, ijk_to_ras) -> dict[str, str]:
    """The three headers of a CT upload (PUT /v1/volumes/{volume_id})."""
    image = np.asarray(image)
    matrix = np.asarray(ijk_to_ras, dtype=float).reshape(4, 4)
    return {
        HEADER_SHAPE: ",".join(str(int(s)) for s in image.shape),
        HEADER_DTYPE: image.dtype.name,
        HEADER_IJK_TO_RAS: ",".join(repr(float(v)) for v in matrix.reshape(-1)),
    }


def volume_bytes(image: np.ndarray) -> memoryview:
    """The upload body: the samples in C order, little-endian (a view when no conversion is needed)."""
    return memoryview(_little_endian(image).reshape(-1)).cast("B")


def parse_volume_headers(shape: str | None, dtype: str | None, ijk_to_ras: str | None):
    """(shape_kji, numpy dtype, 4x4 matrix) from upload headers; InputError names the bad one."""
    if not shape or not dtype or not ijk_to_ras:
        raise InputError(
            f"a CT upload needs the headers {HEADER_SHAPE}, {HEADER_DTYPE} and {HEADER_IJK_TO_RAS}"
        )
    if not re.fullmatch(HEADER_PATTERNS[HEADER_SHAPE], shape):
        raise InputError(f"{HEADER_SHAPE} must be three positive integers k,j,i (at most 6 digits each)")
    if dtype not in DTYPES:
        raise InputError(f"{HEADER_DTYPE} must be one of {', '.join(DTYPES)}")
    values = [float(v) for v in ijk_to_ras.split(",")] \
        if re.fullmatch(HEADER_PATTERNS[HEADER_IJK_TO_RAS], ijk_to_ras) else []
    if not values or not all(math.isfinite(v) for v in values):
        raise InputError(f"{HEADER_IJK_TO_RAS} must be 16 comma-separated finite numbers (row-major 4x4)")
    shape_kji = tuple(int(s) for s in shape.split(","))
    matrix = np.asarray(values, dtype=float).reshape(4, 4)
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise InputError(f"{HEADER_IJK_TO_RAS} is not an invertible IJK->RAS matrix")
    return shape_kji, np.dtype(dtype).newbyteorder("<"), matrix


def array_from_bytes(body: bytes, shape_kji, dtype) -> np.ndarray:
    """The CT array of an upload body; InputError when the byte count does not fit the shape."""
    dtype = np.dtype(dtype)
    expected = int(np.prod(shape_kji)) * dtype.itemsize
    if len(body) != expected:
        raise InputError(
            f"the upload holds {len(body)} bytes but shape {','.join(map(str, shape_kji))} of "
            f"{dtype.name} needs {expected}; send the whole array"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape_kji)


# --- masks and results --------------------------------------------------------------------------
def encode_mask(mask: np.ndarray) -> str:
    """base64 of np.packbits over the boolean mask in C order."""
    return base64.b64encode(np.packbits(np.asarray(mask, dtype=bool).reshape(-1)).tobytes()).decode("ascii")


def decode_mask(text: str, shape_kji) -> np.ndarray:
    """Inverse of encode_mask for a mask of the given shape."""
    count = int(np.prod(shape_kji))
    try:
        packed = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8)
    except (binascii.Error, ValueError, TypeError):
        raise InputError("a mask is not valid base64; send base64(np.packbits(mask))") from None
    if packed.size != (count + 7) // 8:
        raise InputError(
            f"a mask holds {packed.size} packed bytes but its box of {count} voxels needs "
            f"{(count + 7) // 8}; the mask must cover bbox_stop_kji - bbox_start_kji"
        )
    return np.unpackbits(packed, count=count).astype(bool).reshape(tuple(shape_kji))


def _triple(value, what: str, cast) -> tuple:
    try:
        out = tuple(cast(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3:
        raise InputError(f"{what} must be a list of three numbers")
    if cast is float and not all(math.isfinite(v) for v in out):
        raise InputError(f"{what} must hold finite numbers")
    return out


def mask_to_json(result: NodeResult) -> dict:
    """A NodeMask: what classify needs of one node (id, seed, box and mask)."""
    return {
        "id": str(result.node_id),
        "seed_ras": [float(v) for v in result.seed_ras],
        "bbox_start_kji": [int(v) for v in result.bbox_start_kji],
        "bbox_stop_kji": [int(v) for v in result.bbox_stop_kji],
        "mask": encode_mask(result.mask),
    }


def _box(obj: dict) -> tuple[tuple, tuple]:
    start = _triple(obj.get("bbox_start_kji"), "bbox_start_kji", int)
    stop = _triple(obj.get("bbox_stop_kji"), "bbox_stop_kji", int)
    if min(start) < 0 or any(b <= a for a, b in zip(start, stop)):
        raise InputError("a mask box needs 0 <= bbox_start_kji < bbox_stop_kji on every axis")
    return start, stop


def mask_from_json(obj: dict) -> NodeResult:
    """A NodeResult holding only a NodeMask's id, seed, box and mask (the input of classify)."""
    if not isinstance(obj, dict):
        raise InputError("a mask must be a JSON object with id, seed_ras, bbox_start_kji, bbox_stop_kji, mask")
    node_id = obj.get("id")
    if not isinstance(node_id, str) or not node_id:
        raise InputError("a mask needs a non-empty string id")
    seed = _triple(obj.get("seed_ras"), "seed_ras", float)
    start, stop = _box(obj)
    mask = decode_mask(obj.get("mask"), tuple(b - a for a, b in zip(start, stop)))
    return NodeResult(node_id, seed, start, stop, mask)


def json_safe(value):
    """JSON-ready copy: numpy values to Python, non-finite floats to null."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def result_to_json(result: NodeResult) -> dict:
    """NodeResultJSON: every NodeResult field by name, NaN -> null, the mask as in NodeMask, the
    model as {"model_id", "weights_sha256"} (null when unknown)."""
    out = {}
    for f in dataclasses.fields(NodeResult):
        value = getattr(result, f.name)
        if f.name == "mask":
            out[f.name] = encode_mask(value)
        elif f.name == "model":
            out[f.name] = None if value is None else dataclasses.asdict(value)
        else:
            out[f.name] = json_safe(value)
    return out


def _model_from_json(value) -> ModelIdentity | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("model_id"), str) \
            or not isinstance(value.get("weights_sha256", ""), str):
        raise InputError("a node result's model must be {\"model_id\": str, \"weights_sha256\": str}")
    return ModelIdentity(value["model_id"], value.get("weights_sha256", ""))


def result_from_json(obj: dict) -> NodeResult:
    """Inverse of result_to_json (null floats back to NaN)."""
    if not isinstance(obj, dict):
        raise InputError("a node result must be a JSON object")
    start, stop = _box(obj)
    kwargs = {
        "node_id": str(obj.get("node_id", "")),
        "seed_ras": _triple(obj.get("seed_ras"), "seed_ras", float),
        "bbox_start_kji": start,
        "bbox_stop_kji": stop,
        "mask": decode_mask(obj.get("mask"), tuple(b - a for a, b in zip(start, stop))),
        "model": _model_from_json(obj.get("model")),
        "extra": dict(obj.get("extra") or {}),
    }
    for f in dataclasses.fields(NodeResult):
        if f.name in kwargs or f.name not in obj:
            continue
        value = obj[f.name]
        if f.name in _FLOAT_FIELDS:
            value = float("nan") if value is None else float(value)
        elif f.name == "predicted_label":
            value = int(value)
        kwargs[f.name] = value
    return NodeResult(**kwargs)
