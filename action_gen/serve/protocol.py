"""Wire format of the policy server: openpi's msgpack + numpy encoding, and request checks.

Frames are msgpack. A numpy array travels as the map
  {b"__ndarray__": True, b"data": <raw bytes, C order>, b"dtype": dtype.str, b"shape": [..]}
and a numpy scalar as {b"__npgeneric__": True, b"data": <python value>, b"dtype": dtype.str}
— byte for byte what `openpi_client.msgpack_numpy` packs and unpacks, so openpi's
`WebsocketClientPolicy` talks to this server unchanged. Errors go back as a websocket TEXT
frame (openpi's client raises on a `str` reply); everything else is binary.

Decoding never unpickles and never builds object arrays: only bool / int / uint / float /
fixed-width string dtypes are accepted, and the byte count must match shape × itemsize.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

# dtype kinds a frame may carry: bool, signed/unsigned int, float, bytes, unicode.
# Never "O" (object: would need pickle), "V" (void/structured), "c" (complex), "M"/"m".
ALLOWED_KINDS = frozenset("biufSU")
MAX_NDIM = 8
# Keys a request may carry besides the observation spec's.
OPTIONAL_KEYS = ("obs_pad_mask",)
RTC_PREFIX, RTC_WEIGHTS = "rtc/prefix", "rtc/weights"


class ProtocolError(ValueError):
    """A request that cannot be served; the message names the key and the problem."""


def _encode(obj):
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind not in ALLOWED_KINDS:
        raise ValueError(f"cannot send dtype {obj.dtype} (kind {obj.dtype.kind!r})")
    if isinstance(obj, np.ndarray):
        return {
            b"__ndarray__": True,
            b"data": np.ascontiguousarray(obj).tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": obj.shape,
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _dtype(raw) -> np.dtype:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if not isinstance(raw, str):
        raise ProtocolError(f"array dtype must be a string, got {type(raw).__name__}")
    try:
        dtype = np.dtype(raw)
    except TypeError as e:
        raise ProtocolError(f"unknown array dtype {raw!r}") from e
    if dtype.kind not in ALLOWED_KINDS or dtype.fields is not None:
        raise ProtocolError(
            f"array dtype {raw!r} (kind {dtype.kind!r}) is not allowed; "
            "send bool, int, uint, float or fixed-width string arrays"
        )
    return dtype


def _decode(obj: dict):
    if b"__ndarray__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        shape = obj.get(b"shape")
        data = obj.get(b"data")
        if not isinstance(shape, list | tuple) or not all(
            isinstance(d, int) and d >= 0 for d in shape
        ):
            raise ProtocolError(f"array shape must be a list of ints >= 0, got {shape!r}")
        if len(shape) > MAX_NDIM:
            raise ProtocolError(f"array has {len(shape)} dims; at most {MAX_NDIM}")
        if not isinstance(data, bytes):
            raise ProtocolError(f"array data must be bytes, got {type(data).__name__}")
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise ProtocolError(
                f"array of shape {tuple(shape)} and dtype {dtype} needs {expected} bytes, "
                f"got {len(data)}"
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as e:
            raise ProtocolError(f"bad numpy scalar of dtype {dtype}: {e}") from e
    return obj


def pack(obj: Any) -> bytes:
    """msgpack-encodes `obj` (dicts, lists, str, numbers, numpy arrays and scalars)."""
    return msgpack.packb(obj, default=_encode)


def unpack(data: bytes) -> Any:
    """Decodes a frame; raises ProtocolError (never anything else) on a bad one."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected a binary msgpack frame, got {type(data).__name__}")
    try:
        return msgpack.unpackb(bytes(data), object_hook=_decode, strict_map_key=False)
    except ProtocolError:
        raise
    except msgpack.exceptions.ExtraData as e:
        raise ProtocolError(f"frame has trailing bytes after one msgpack object: {e}") from e
    except (ValueError, TypeError, msgpack.exceptions.UnpackException) as e:
        raise ProtocolError(f"frame is not valid msgpack: {e}") from e


def spec_to_wire(spec: Mapping) -> dict:
    """{key: (shape, dtype)} -> {key: {"shape": [...], "dtype": str}} (msgpack-friendly)."""
    return {k: {"shape": list(shape), "dtype": dtype} for k, (shape, dtype) in spec.items()}


def validate_observation(
    request: Any, spec: Mapping, *, action_shape: tuple[int, int] | None = None
) -> tuple[dict, dict | None]:
    """Checks one unbatched request against the policy's observation spec.

    Every spec key must be present with exactly the spec's shape; numeric arrays may come
    in any dtype that casts to the spec's within its kind (float64 -> float32, not
    float -> uint8 or str -> float); float values must be finite. `("string")` entries (a
    text prompt) must be a str (or UTF-8 bytes). `obs_pad_mask` [T] bool is optional.
    With `action_shape`, the real-time-chunking keys `rtc/prefix` [H, A] and
    `rtc/weights` [H] are accepted (both or neither).

    Returns:
      (observation {key: array cast to the spec dtype / str}, rtc {"prefix", "weights"} or
      None).
    Raises:
      ProtocolError naming the key and what is wrong.
    """
    if not isinstance(request, dict):
        raise ProtocolError(
            f"request must be a map of observation keys, got {type(request).__name__}"
        )
    bad_keys = [k for k in request if not isinstance(k, str)]
    if bad_keys:
        raise ProtocolError(f"request keys must be strings, got {bad_keys[:3]!r}")
    allowed = set(spec) | set(OPTIONAL_KEYS)
    if action_shape is not None:
        allowed |= {RTC_PREFIX, RTC_WEIGHTS}
    unknown = sorted(set(request) - allowed)
    if unknown:
        raise ProtocolError(f"unknown key(s) {unknown}; expected {sorted(spec)}")
    missing = sorted(set(spec) - set(request))
    if missing:
        raise ProtocolError(f"missing key(s) {missing}; expected {sorted(spec)}")
    horizon = spec[next(iter(spec))][0][0] if spec else 0
    full_spec = dict(spec)
    if "obs_pad_mask" in request and "obs_pad_mask" not in full_spec:
        state_spec = full_spec.get("observation/state")
        full_spec["obs_pad_mask"] = ((state_spec[0][0] if state_spec else horizon,), "bool")
    if action_shape is not None:
        full_spec[RTC_PREFIX] = (tuple(action_shape), "float32")
        full_spec[RTC_WEIGHTS] = ((action_shape[0],), "float32")
    out = {}
    for key, (shape, dtype) in full_spec.items():
        if key not in request:
            continue
        out[key] = _check_value(key, request[key], tuple(shape), dtype)
    rtc = None
    if (RTC_PREFIX in out) != (RTC_WEIGHTS in out):
        raise ProtocolError(f"send both {RTC_PREFIX!r} and {RTC_WEIGHTS!r}, or neither")
    if RTC_PREFIX in out:
        rtc = {"prefix": out.pop(RTC_PREFIX), "weights": out.pop(RTC_WEIGHTS)}
        if np.any((rtc["weights"] < 0) | (rtc["weights"] > 1)):
            raise ProtocolError(f"{RTC_WEIGHTS!r} must lie in [0, 1]")
    return out, rtc


def split_rtc(request: Any, action_shape: tuple[int, int] | None) -> tuple[Any, dict | None]:
    """(the request without its real-time-chunking keys, rtc {"prefix" [H, A], "weights"
    [H]} or None), for requests in a robot's own layout (validated by its adapter).

    Raises:
      ProtocolError naming the RTC key that is malformed, or sent to a policy without RTC.
    """
    if not isinstance(request, dict) or (RTC_PREFIX not in request and RTC_WEIGHTS not in request):
        return request, None
    if action_shape is None:
        raise ProtocolError(f"{RTC_PREFIX!r}: this policy has no real-time chunking")
    if (RTC_PREFIX in request) != (RTC_WEIGHTS in request):
        raise ProtocolError(f"send both {RTC_PREFIX!r} and {RTC_WEIGHTS!r}, or neither")
    rest = {k: v for k, v in request.items() if k not in (RTC_PREFIX, RTC_WEIGHTS)}
    rtc = {
        "prefix": _check_value(RTC_PREFIX, request[RTC_PREFIX], tuple(action_shape), "float32"),
        "weights": _check_value(RTC_WEIGHTS, request[RTC_WEIGHTS], (action_shape[0],), "float32"),
    }
    if np.any((rtc["weights"] < 0) | (rtc["weights"] > 1)):
        raise ProtocolError(f"{RTC_WEIGHTS!r} must lie in [0, 1]")
    return rest, rtc


def _check_value(key: str, value: Any, shape: tuple, dtype: str):
    if dtype == "string":
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ProtocolError(f"{key!r} is not valid UTF-8: {e}") from e
        if isinstance(value, np.ndarray) and value.dtype.kind in "SU" and value.ndim == 0:
            value = str(value.item() if value.dtype.kind == "U" else value.item().decode())
        if not isinstance(value, str):
            raise ProtocolError(f"{key!r} must be a string, got {type(value).__name__}")
        return value
    if isinstance(value, list | tuple | int | float | bool) and not isinstance(value, str):
        try:
            value = np.asarray(value)
        except ValueError as e:
            raise ProtocolError(f"{key!r} is not a rectangular array: {e}") from e
    if not isinstance(value, np.ndarray | np.generic):
        raise ProtocolError(
            f"{key!r} must be an array of shape {shape} {dtype}, got {type(value).__name__}"
        )
    value = np.asarray(value)
    if value.shape != shape:
        raise ProtocolError(
            f"{key!r} has shape {value.shape}, expected {shape} (one observation, no batch dim)"
        )
    target = np.dtype(dtype)
    ok = (
        value.dtype == target
        if target.kind == "b"
        else value.dtype.kind in "biuf" and np.can_cast(value.dtype, target, "same_kind")
    )
    if not ok:
        raise ProtocolError(f"{key!r} has dtype {value.dtype}, expected {target}")
    if value.dtype.kind == "f":
        bad = ~np.isfinite(value)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ProtocolError(f"{key!r} has a non-finite value {value[index]} at index {index}")
    if target.kind in "iu" and value.size and value.dtype != target:
        info = np.iinfo(target)
        if value.min() < info.min or value.max() > info.max:
            raise ProtocolError(
                f"{key!r} has values in [{value.min()}, {value.max()}], outside {target}'s range"
            )
    return value.astype(target, copy=False)
