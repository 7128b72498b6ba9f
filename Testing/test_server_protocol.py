"""The server's wire format: CT naming, upload headers, node masks and results as JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.core.model_identity import ModelIdentity
from LymphNodeMTLLib.core.node_result import NodeResult
from LymphNodeMTLLib.server import protocol

MATRIX = np.array([[-0.8, 0.0, 0.1, 120.0],
                   [0.0, 0.7, 0.0, -30.5],
                   [0.0, 0.0, 2.5, 400.0],
                   [0.0, 0.0, 0.0, 1.0]])


def _ct(dtype="int16", shape=(5, 6, 7), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 300, size=shape)).astype(dtype)


def _result(seed=1):
    rng = np.random.default_rng(seed)
    mask = rng.random((3, 5, 4)) > 0.5  # 60 voxels: not a multiple of 8
    return NodeResult("LN 7", (1.5, -2.25, 30.0), (2, 3, 4), (5, 8, 8), mask, probability=0.73,
                      predicted_label=1, volume_mm3=123.0, short_axis_mm=4.5, long_axis_mm=8.0,
                      mean_hu=float("nan"), sd_hu=np.float32(12.5), status="low_agreement",
                      probability_low=0.6, probability_high=float("nan"), network_probability=0.71,
                      model=ModelIdentity("mtl-v1", "ab" * 32),
                      extra={"scores": np.array([0.1, np.nan]), "n": np.int64(3), "ok": np.bool_(True)})


# --- volume_id ----------------------------------------------------------------------------------
def test_volume_id_is_a_hash_of_dtype_shape_geometry_and_samples():
    image = _ct()
    vid = protocol.volume_id(image, MATRIX)
    assert len(vid) == 64 and int(vid, 16) >= 0
    assert protocol.volume_id(image.copy(), MATRIX.copy()) == vid
    changed = image.copy()
    changed[2, 3, 4] += 1
    assert protocol.volume_id(changed, MATRIX) != vid
    moved = MATRIX.copy()
    moved[0, 3] += 0.5
    assert protocol.volume_id(image, moved) != vid
    assert protocol.volume_id(image.astype(np.int32), MATRIX) != vid
    assert protocol.volume_id(image.reshape(5, 7, 6), MATRIX) != vid


def test_volume_id_follows_the_documented_byte_layout():
    import hashlib

    image = _ct("float32")
    h = hashlib.sha256(b"float32")
    h.update(np.array(image.shape, dtype="<i8").tobytes())
    h.update(MATRIX.astype("<f8").tobytes())
    h.update(image.astype("<f4").tobytes())
    assert protocol.volume_id(image, MATRIX) == h.hexdigest()


def test_volume_id_ignores_memory_layout_and_byte_order():
    image = _ct("int16", shape=(6, 6, 6))
    fortran = np.asfortranarray(image)
    big_endian = image.astype(">i2")
    vid = protocol.volume_id(image, MATRIX)
    assert protocol.volume_id(fortran, MATRIX) == vid
    assert protocol.volume_id(big_endian, MATRIX) == vid
    assert bytes(protocol.volume_bytes(big_endian)) == image.astype("<i2").tobytes()


def test_volume_id_refuses_unsupported_sample_types():
    with pytest.raises(InputError, match="int8"):
        protocol.volume_id(np.zeros((2, 2, 2), np.int8), MATRIX)


# --- upload headers -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", protocol.DTYPES)
def test_upload_headers_and_body_round_trip(dtype):
    image = _ct(dtype)
    headers = protocol.volume_headers(image, MATRIX)
    shape, np_dtype, matrix = protocol.parse_volume_headers(
        headers[protocol.HEADER_SHAPE], headers[protocol.HEADER_DTYPE], headers[protocol.HEADER_IJK_TO_RAS])
    assert shape == image.shape and np_dtype == np.dtype(dtype)
    np.testing.assert_array_equal(matrix, MATRIX)  # repr() keeps every bit of a float
    back = protocol.array_from_bytes(bytes(protocol.volume_bytes(image)), shape, np_dtype)
    np.testing.assert_array_equal(back, image)
    assert protocol.volume_id(back, matrix) == protocol.volume_id(image, MATRIX)


@pytest.mark.parametrize("shape, dtype, matrix, words", [
    (None, "int16", "1", "headers"),
    ("4,4", "int16", ",".join(["1"] * 16), "three positive"),
    ("4,0,4", "int16", ",".join(["1"] * 16), "three positive"),
    ("4,a,4", "int16", ",".join(["1"] * 16), "three positive"),
    ("4,4,4", "int8", ",".join(["1"] * 16), "int16"),
    ("4,4,4", "int16", ",".join(["1"] * 15), "16 comma"),
    ("4,4,4", "int16", ",".join(["nan"] * 16), "finite"),
    ("4,4,4", "int16", ",".join(["0"] * 16), "invertible"),
])
def test_bad_upload_headers_are_one_line_input_errors(shape, dtype, matrix, words):
    with pytest.raises(InputError, match=words) as err:
        protocol.parse_volume_headers(shape, dtype, matrix)
    assert "\n" not in str(err.value)


def test_upload_body_of_the_wrong_size_is_refused():
    with pytest.raises(InputError, match="needs 128"):
        protocol.array_from_bytes(b"\0" * 127, (4, 4, 4), np.dtype("<i2"))


# --- masks and results --------------------------------------------------------------------------
def test_mask_round_trip_keeps_id_seed_box_and_every_voxel():
    r = _result()
    obj = json.loads(json.dumps(protocol.mask_to_json(r)))
    assert set(obj) == {"id", "seed_ras", "bbox_start_kji", "bbox_stop_kji", "mask"}
    back = protocol.mask_from_json(obj)
    assert back.node_id == "LN 7" and back.seed_ras == r.seed_ras
    assert back.bbox_start_kji == r.bbox_start_kji and back.bbox_stop_kji == r.bbox_stop_kji
    np.testing.assert_array_equal(back.mask, r.mask)
    assert back.mask.dtype == bool


def test_mask_encoding_is_base64_of_packbits():
    import base64

    mask = np.zeros((1, 1, 10), bool)
    mask[0, 0, [0, 9]] = True
    assert base64.b64decode(protocol.encode_mask(mask)) == bytes([0b10000000, 0b01000000])


@pytest.mark.parametrize("change, words", [
    ({"id": ""}, "id"),
    ({"seed_ras": [1, 2]}, "seed_ras"),
    ({"seed_ras": [1, 2, "x"]}, "seed_ras"),
    ({"bbox_stop_kji": [2, 8, 8]}, "box"),
    ({"bbox_start_kji": [-1, 3, 4]}, "box"),
    ({"mask": "***"}, "base64"),
    ({"mask": "AAAA"}, "packed bytes"),
])
def test_bad_masks_are_one_line_input_errors(change, words):
    obj = {**protocol.mask_to_json(_result()), **change}
    with pytest.raises(InputError, match=words) as err:
        protocol.mask_from_json(obj)
    assert "\n" not in str(err.value)


def test_result_round_trip_keeps_every_field_and_nan_becomes_null():
    r = _result()
    text = json.dumps(protocol.result_to_json(r), allow_nan=False)  # strictly valid JSON
    obj = json.loads(text)
    assert obj["node_id"] == "LN 7" and obj["mean_hu"] is None and obj["probability_high"] is None
    assert obj["extra"] == {"scores": [0.1, None], "n": 3, "ok": True}
    back = protocol.result_from_json(obj)
    for name in ("node_id", "seed_ras", "bbox_start_kji", "bbox_stop_kji", "probability",
                 "predicted_label", "volume_mm3", "short_axis_mm", "long_axis_mm", "status",
                 "probability_low"):
        assert getattr(back, name) == getattr(r, name), name
    assert back.sd_hu == 12.5
    assert math.isnan(back.mean_hu) and math.isnan(back.probability_high)
    assert math.isnan(back.mask_agreement)
    assert obj["model"] == {"model_id": "mtl-v1", "weights_sha256": "ab" * 32} and back.model == r.model
    assert back.network_probability == 0.71
    np.testing.assert_array_equal(back.mask, r.mask)
    assert back.extra["n"] == 3


def test_result_without_a_model_reads_back_without_one_and_a_bad_model_is_refused():
    obj = json.loads(json.dumps(protocol.result_to_json(_result())))
    del obj["model"]
    assert protocol.result_from_json(obj).model is None
    with pytest.raises(InputError, match="model"):
        protocol.result_from_json({**obj, "model": "mtl-v1"})
