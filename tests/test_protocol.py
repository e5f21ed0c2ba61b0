"""Wire protocol v1: round trips of every kind, and every way a message can be wrong."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.io import protocol as P


def frame(pixels=None, **kw) -> P.FrameMessage:
    fields = dict(stream="echo", seq=7, t_acq_ns=123, modality="US",
                  pixels=np.arange(12, dtype=np.uint8).reshape(3, 4), spacing_mm=(0.3, 0.4),
                  fps=50.0)
    fields.update(kw)
    if pixels is not None:
        fields["pixels"] = pixels
    return P.FrameMessage(**fields)


def header_of(parts) -> dict:
    return json.loads(bytes(parts[0]))


def with_header(parts, **changes) -> list:
    header = header_of(parts)
    for key, value in changes.items():
        if value is ...:
            header.pop(key, None)
        else:
            header[key] = value
    return [json.dumps(header).encode(), *parts[1:]]


# -- round trips -------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
@pytest.mark.parametrize("shape", [(3, 4), (5, 6, 3)])
def test_frame_round_trip_keeps_pixels_and_fields(dtype, shape):
    pixels = (np.arange(np.prod(shape)) % 200).astype(dtype).reshape(shape)
    sent = frame(pixels, t_send_ns=99, ecg_r=True, view="a4c")
    got = P.decode(P.encode(sent))
    assert isinstance(got, P.FrameMessage)
    np.testing.assert_array_equal(got.pixels, pixels)
    assert got.pixels.dtype == np.dtype(dtype) and got.pixels.shape == shape
    assert (got.stream, got.seq, got.t_acq_ns, got.t_send_ns) == ("echo", 7, 123, 99)
    assert (got.spacing_mm, got.fps, got.ecg_r, got.view) == ((0.3, 0.4), 50.0, True, "a4c")


def test_a_stack_slice_frame_carries_its_phase_and_trigger_time():
    sent = frame(np.zeros((4, 5), np.int16), modality="MR", phase_index=3, trigger_time_ms=112.5)
    parts = P.encode(sent)
    assert (header_of(parts)["phase_index"], header_of(parts)["trigger_time_ms"]) == (3, 112.5)
    got = P.decode(parts)
    assert (got.phase_index, got.trigger_time_ms) == (3, 112.5)
    plain = P.decode(P.encode(frame()))  # absent unless the sender knows them
    assert (plain.phase_index, plain.trigger_time_ms) == (None, None)
    assert "phase_index" not in header_of(P.encode(frame()))


def test_big_endian_and_non_contiguous_pixels_go_out_little_endian_contiguous():
    pixels = np.arange(24, dtype=">u2").reshape(4, 6)[:, ::2]
    parts = P.encode(frame(pixels))
    assert header_of(parts)["dtype"] == "uint16"
    assert bytes(parts[1]) == np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    np.testing.assert_array_equal(P.decode(parts).pixels, pixels)


def test_multichannel_mr_frame_names_its_channels():
    pixels = np.zeros((4, 5, 4), np.float32)
    sent = frame(pixels, modality="MR", channels=("magnitude", "vx", "vy", "vz"))
    got = P.decode(P.encode(sent))
    assert got.channels == ("magnitude", "vx", "vy", "vz") and got.modality == "MR"


APP_DECLARATION = {"name": "echo", "modalities": ["US"], "roles": ["view", "seg", "flow"],
                   "gate": "a4c", "result_fields": [{"name": "gls_pct", "type": "number",
                                                     "doc": "GLS, %"}],
                   "beat_fields": []}


def test_every_other_kind_round_trips():
    messages = [
        P.StartMessage("echo", {"n_frames": 30, "fps": 30.0, "app": APP_DECLARATION}),
        P.EndMessage("echo", 30, {"processed": 29}),
        P.ResultMessage("echo", 3, 10, {"preprocess": 0.5, "total": 1.25}, t_recv_ns=11,
                        t_result_ns=12, dropped=2, flags=["dropped:2"],
                        budget={"budget_ms": 20.0, "level": 1, "mode": "view_every_4"},
                        t_publish_ns=13, app="echo",
                        fields={"view": {"label": "a4c", "p": 0.99},
                                "points_mm": [[1.0, 2.0]] * 120, "gls_pct": -18.5,
                                "regional_pct": {"basal_septal": -15.0}, "beat": 0,
                                "phase": "ES", "strain_rate_per_s": -1.1, "empty": None}),
        P.ResultMessage("bare", 0, 0, {}),
        P.BeatMessage("echo", 0, fields={"ed_seq": 0, "es_seq": 12, "peak_gls_pct": -19.0,
                                         "regional_peak_pct": {"apical_lateral": -22.0},
                                         "duration_s": 0.8, "ed_source": "ecg"}),
        P.BeatMessage("mr/slice-3", 4),
        P.WallMotionMessage("mr", 1, fields={
            "stack_id": "ab12", "msi": 1.25, "missing_segments": [16],
            "segments": [{"aha": 1, "name": "basal anterior", "score": 2, "label": "hypokinetic",
                          "p": [0.1, 0.7, 0.15, 0.05]}]}),
        P.ErrorMessage("payload_size", "too short", stream="echo", seq=4),
        P.ErrorMessage("too_many_streams", "limit", stream="s"),
        P.ErrorMessage("no_app", "no app analyses modality 'CT'"),
        P.HelloMessage(version="0.1.0", mode="live", apps={"echo": APP_DECLARATION}),
        P.HelloMessage(version="0.1.0", mode="lossless"),
    ]
    for sent in messages:
        assert P.decode(P.encode(sent)) == sent


def test_result_and_beat_fields_are_top_level_header_keys():
    result = P.ResultMessage("echo", 1, 5, {"total": 1.0}, app="echo",
                             fields={"gls_pct": -12.5, "phase": None})
    header = header_of(P.encode(result))
    assert header["app"] == "echo" and header["gls_pct"] == -12.5 and header["phase"] is None
    assert "fields" not in header and "parts" not in header
    assert P.result_header(result) == header
    beat = header_of(P.encode(P.BeatMessage("echo", 2, fields={"ed_seq": 40})))
    assert beat == {"v": 1, "kind": "beat", "stream": "echo", "beat": 2, "ed_seq": 40}
    # a beat may carry array parts, as a result does
    p = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    parts = P.encode(P.BeatMessage("mr/slice-1", 0, fields={"ed_seq": 0}, arrays={"infarct_p": p}))
    assert len(parts) == 2 and header_of(parts)["parts"] == ["infarct_p"]
    back = P.decode(parts)
    assert back.fields == {"ed_seq": 0} and np.array_equal(back.arrays["infarct_p"], p)
    assert back == P.BeatMessage("mr/slice-1", 0, {"ed_seq": 0}, {"infarct_p": p})
    assert back != P.BeatMessage("mr/slice-1", 0, {"ed_seq": 0}, {"infarct_p": p + 1})
    with pytest.raises(P.ProtocolError, match="bad_parts|part"):
        P.decode(parts[:1])
    with pytest.raises(P.ProtocolError, match="would overwrite"):
        P.encode(P.BeatMessage("s", 0, fields={"infarct_p": 1}, arrays={"infarct_p": p}))
    assert P.WallMotionMessage("s", 0, {}, {"m": p}) == P.WallMotionMessage("s", 0, {}, {"m": p})
    assert P.WallMotionMessage("s", 0) != P.BeatMessage("s", 0)
    wm = header_of(P.encode(P.WallMotionMessage("mr", 0, fields={"msi": 1.0})))
    assert wm == {"v": 1, "kind": "wall_motion", "stream": "mr", "beat": 0, "msi": 1.0}
    with pytest.raises(P.ProtocolError, match="wall_motion fields .*own keys"):
        P.encode(P.WallMotionMessage("mr", 0, fields={"kind": "beat"}))
    # a result of no app has no app key
    assert "app" not in header_of(P.encode(P.ResultMessage("s", 0, 0, {})))


def test_hello_declares_the_apps():
    hello = P.HelloMessage(version="1", mode="live", apps={"echo": APP_DECLARATION})
    header = header_of(P.encode(hello))
    assert header["apps"]["echo"]["result_fields"][0]["name"] == "gls_pct"
    # a hello without apps (an older side-car) still decodes
    del header["apps"]
    assert P.decode([json.dumps(header).encode()]).apps == {}
    assert code_of([json.dumps({**header, "apps": [1]}).encode()]).code == "bad_field"


def test_result_with_mask_part():
    mask = (np.arange(20).reshape(4, 5) % 2).astype(np.uint8)
    sent = P.ResultMessage("echo", 1, 5, {"total": 1.0}, arrays={"mask": mask})
    parts = P.encode(sent)
    header = header_of(parts)
    assert len(parts) == 2 and header["mask"] == {"shape": [4, 5], "dtype": "uint8"}
    assert header["parts"] == ["mask"]
    got = P.decode(parts)
    assert list(got.arrays) == ["mask"] and got.fields == {}
    np.testing.assert_array_equal(got.arrays["mask"], mask)


def test_result_with_two_array_parts_round_trips():
    mask = (np.arange(20).reshape(4, 5) % 2).astype(np.uint8)
    speed = np.arange(6, dtype=">f4").reshape(2, 3) / 7  # big-endian: sent little-endian
    rgb = np.arange(2 * 2 * 3, dtype=np.uint16).reshape(2, 2, 3)
    sent = P.ResultMessage("echo", 9, 5, {"total": 1.0}, app="echo",
                           fields={"gls_pct": -3.0}, arrays={"speed": speed, "mask": mask,
                                                             "overlay": rgb})
    parts = P.encode(sent)
    header = header_of(parts)
    assert len(parts) == 4 and header["parts"] == ["speed", "mask", "overlay"]
    assert header["speed"] == {"shape": [2, 3], "dtype": "float32"}
    assert bytes(parts[1]) == np.ascontiguousarray(speed, "<f4").tobytes()
    got = P.decode(parts)
    assert list(got.arrays) == ["speed", "mask", "overlay"]
    np.testing.assert_array_equal(got.arrays["speed"], speed)
    np.testing.assert_array_equal(got.arrays["mask"], mask)
    np.testing.assert_array_equal(got.arrays["overlay"], rgb)
    assert got.arrays["mask"].dtype == np.uint8 and got.arrays["overlay"].dtype == np.uint16
    # the array specs are not fields
    assert got.fields == {"gls_pct": -3.0} and got.app == "echo"
    assert (got.stream, got.seq, got.latency_ms) == ("echo", 9, {"total": 1.0})
    # one part short or too many, a part the wrong size, an unnamed array spec
    assert code_of(parts[:3]).code == "bad_parts"
    assert code_of([*parts, b"x"]).code == "bad_parts"
    assert code_of([parts[0], bytes(parts[1])[:-1], *parts[2:]]).code == "payload_size"
    assert code_of(with_header(parts, speed=...)).code == "bad_field"
    not_a_list = json.dumps({**header, "parts": "mask"}).encode()
    assert code_of([not_a_list, *parts[1:]]).code == "bad_field"
    with pytest.raises(P.ProtocolError, match="dtype"):
        P.encode(P.ResultMessage("s", 0, 0, {}, arrays={"bad": np.zeros(3, np.float64)}))


def test_legacy_result_header_with_only_a_mask_still_decodes():
    """v1 before ``parts``: a result carried at most a mask, named by its header key."""
    mask = (np.arange(12).reshape(3, 4) % 3 == 0).astype(np.uint8)
    header = {"v": 1, "kind": "result", "stream": "old", "seq": 4, "t_acq_ns": 7,
              "t_recv_ns": 8, "t_result_ns": 9, "latency_ms": {"total": 2.0}, "dropped": 0,
              "flags": [], "budget": None, "view": {"label": "a4c", "p": 0.9},
              "gls_pct": -10.0, "mask": {"shape": [3, 4], "dtype": "uint8"}}
    got = P.decode([json.dumps(header).encode(), mask.tobytes()])
    assert isinstance(got, P.ResultMessage) and got.app is None
    assert list(got.arrays) == ["mask"]
    np.testing.assert_array_equal(got.arrays["mask"], mask)
    assert got.fields == {"view": {"label": "a4c", "p": 0.9}, "gls_pct": -10.0}
    # its mask part is required, and no other
    assert code_of([json.dumps(header).encode()]).code == "bad_parts"
    del header["mask"]
    got = P.decode([json.dumps(header).encode()])
    assert got.arrays == {} and got.fields["gls_pct"] == -10.0


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), seq=st.integers(0, 2**62),
       dtype=st.sampled_from(["uint8", "uint16", "int16", "float32"]))
def test_any_valid_frame_round_trips(rows, cols, seq, dtype):
    rng = np.random.default_rng(seq % 1000)
    pixels = rng.integers(0, 255, (rows, cols)).astype(dtype)
    got = P.decode(P.encode(frame(pixels, seq=seq)))
    assert got.seq == seq
    np.testing.assert_array_equal(got.pixels, pixels)


# -- what is wrong, and the code that says so --------------------------------


def code_of(parts, **kw) -> P.ProtocolError:
    with pytest.raises(P.ProtocolError) as info:
        P.decode(parts, **kw)
    return info.value


@pytest.mark.parametrize("head", [b"", b"not json", b"\xff\xfe", b"[1,2]", b'"text"', b"{"])
def test_malformed_headers(head):
    assert code_of([head]).code == "malformed_header"


def test_oversized_header_is_malformed():
    head = json.dumps({"v": 1, "kind": "start", "stream": "s",
                       "meta": {"x": "y" * P.MAX_HEADER_BYTES}}).encode()
    assert code_of([head]).code == "malformed_header"


def test_a_header_nested_deeper_than_the_limit_is_malformed():
    """Issue 14: a start whose meta nests 254 levels decodes in orjson (1024) but cannot be
    written back (255); refused when decoded, at any depth over the limit."""
    deep = b'{"v":1,"kind":"start","stream":"n","meta":' + b'{"a":' * 254 + b"1" + b"}" * 255
    error = code_of([deep])
    assert error.code == "malformed_header" and "32 levels" in error.message
    def nested(levels):  # the header is level 1, meta level 2, then lists
        return json.dumps({"v": 1, "kind": "start", "stream": "s",
                           "meta": {"x": json.loads("[" * (levels - 2) + "]" * (levels - 2))}}
                          ).encode()

    assert P.decode([nested(P.MAX_NESTING_DEPTH)]).kind == "start"
    assert code_of([nested(P.MAX_NESTING_DEPTH + 1)]).code == "malformed_header"


def test_an_error_does_not_copy_a_huge_bad_value_back():
    """Issue 14: a 250 KB bad field gave a 250 KB error to every subscriber."""
    head = json.dumps({"v": 1, "kind": "start", "stream": "s", "meta": "x" * 250_000}).encode()
    error = code_of([head])
    assert error.code == "bad_field" and error.message.startswith("meta must be a JSON object")
    assert len(error.message) < 400 and "more characters" in error.message


@pytest.mark.parametrize("version", [0, 2, "1", None, ...])
def test_unknown_protocol_version(version):
    error = code_of(with_header(P.encode(frame()), v=version))
    assert error.code == "unsupported_version"
    assert (error.stream, error.seq) == ("echo", 7)  # says which frame it was


def test_unknown_kind():
    assert code_of(with_header(P.encode(frame()), kind="pixels")).code == "unknown_kind"


@pytest.mark.parametrize("cut", [1, 12 - 1, 0])
def test_payload_shorter_than_shape_times_dtype(cut):
    parts = P.encode(frame())
    error = code_of([parts[0], bytes(parts[1])[:cut]])
    assert error.code == "payload_size" and "12" in error.message and error.seq == 7


def test_payload_longer_than_shape_times_dtype():
    parts = P.encode(frame())
    assert code_of([parts[0], bytes(parts[1]) + b"\0"]).code == "payload_size"


def test_too_many_or_too_few_parts():
    parts = P.encode(frame())
    assert code_of(parts[:1]).code == "bad_parts"
    assert code_of([*parts, b"extra"]).code == "bad_parts"
    assert code_of([]).code == "bad_parts"


def test_too_large_by_declared_shape_and_by_bytes():
    parts = P.encode(frame(np.zeros((100, 100), np.uint8)))
    assert code_of(parts, max_message_bytes=5_000).code == "too_large"
    huge = with_header(parts, shape=[16000, 16000])
    assert code_of(huge, max_message_bytes=1 << 20).code == "too_large"


@pytest.mark.parametrize("field,value", [
    ("dtype", "float64"), ("dtype", ">u2"), ("dtype", None), ("dtype", []), ("dtype", {}), ("shape", [3]),
    ("shape", [3, 4, 5, 6]), ("shape", [0, 4]), ("shape", [-3, 4]), ("shape", "3x4"),
    ("shape", [3.0, 4]), ("shape", [3, 4, 2]), ("seq", -1), ("seq", "7"), ("seq", True),
    ("stream", ""), ("stream", 5), ("modality", "CT"), ("spacing_mm", [0.3]),
    ("spacing_mm", [0.3, -1]), ("spacing_mm", [0.3, "x"]), ("fps", 0), ("fps", "fast"),
    ("t_acq_ns", 1.5), ("ecg_r", "yes"), ("channels", ["a", "b"]), ("stream", ...),
    ("t_acq_ns", ...), ("fps", ...), ("phase_index", -1), ("phase_index", 1.5),
    ("trigger_time_ms", -20.0), ("trigger_time_ms", "20"),
])
def test_bad_fields_name_the_field(field, value):
    error = code_of(with_header(P.encode(frame()), **{field: value}))
    assert error.code == "bad_field"
    assert field in error.message


def test_nan_in_header_numbers_is_refused_on_encode():
    with pytest.raises(ValueError):
        P.encode(frame(fps=float("nan")))


def test_unsupported_pixel_dtype_is_refused_on_encode():
    with pytest.raises(P.ProtocolError, match="dtype"):
        P.encode(frame(np.zeros((2, 2), np.float64)))


def test_every_error_code_is_documented_in_protocol_md():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    for code in P.ERROR_CODES:
        assert f"`{code}`" in doc, code


# -- the fast path for plain frames agrees with the full validation ---------------

json_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(-2, 300),
                        st.text(max_size=4), st.lists(st.integers(-1, 20), max_size=3),
                        st.lists(st.floats(-1, 2), max_size=3),
                        st.sampled_from(["US", "MR", "uint8", "float32", "frame"]))


def test_plain_frame_fast_path_takes_a_view_hint():
    """A frame with the operator's view hint (as `replay --view` and the demo send it)
    still takes the fast path, and reads as the full validation reads it."""
    parts = P.encode(frame(np.zeros((3, 4), np.uint8), t_send_ns=1, view="a4c"))
    fast = P._decode_plain_frame(header_of(parts), parts, 1 << 20)
    assert fast is not None and fast.view == "a4c"
    assert P.decode(parts).view == "a4c"


@settings(max_examples=400, deadline=None)
@given(changes=st.dictionaries(
    st.sampled_from(["stream", "seq", "t_acq_ns", "modality", "shape", "dtype", "spacing_mm",
                     "fps", "t_send_ns", "ecg_r", "view", "phase_index", "trigger_time_ms",
                     "extra"]), json_values, max_size=3),
    drop=st.sets(st.sampled_from(["stream", "seq", "shape", "fps", "t_send_ns"]), max_size=2))
def test_plain_frame_fast_path_accepts_only_what_full_validation_accepts(changes, drop):
    parts = P.encode(frame(np.zeros((3, 4), np.uint8), t_send_ns=1))
    header = {**header_of(parts), **changes}
    for key in drop:
        header.pop(key, None)
    fast = P._decode_plain_frame(header, parts, 1 << 20)
    try:
        full = P._decode_frame(P._Fields(header, None, None), parts, 1 << 20)
    except P.ProtocolError:
        full = None
    if fast is not None:
        assert full is not None, header
        for name in ("stream", "seq", "t_acq_ns", "modality", "spacing_mm", "fps",
                     "t_send_ns", "ecg_r", "channels", "view", "phase_index", "trigger_time_ms"):
            assert getattr(fast, name) == getattr(full, name), name
        np.testing.assert_array_equal(fast.pixels, full.pixels)
        assert fast.pixels.dtype == full.pixels.dtype


@settings(max_examples=400, deadline=None)
@given(header=st.dictionaries(
    st.sampled_from(["v", "kind", "stream", "seq", "t_acq_ns", "modality", "shape", "dtype",
                     "spacing_mm", "fps", "meta", "n_frames", "code", "message", "mask",
                     "latency_ms", "flags", "beat", "ed_seq", "channels", "service",
                     "parts", "app", "apps"]),
    st.one_of(json_values, st.sampled_from(["frame", "start", "end", "result", "beat",
                                            "error", "hello"]), st.just(1),
              st.lists(st.sampled_from(["mask", "stream", "seq", "shape"]), max_size=3),
              st.fixed_dictionaries({"shape": st.lists(st.integers(-1, 3), max_size=3),
                                     "dtype": st.sampled_from(["uint8", "float32", "x"])}))),
    payload=st.binary(max_size=64), n_parts=st.integers(1, 3))
def test_decode_never_raises_anything_but_protocol_error(header, payload, n_parts):
    parts = [json.dumps(header).encode()] + [payload] * (n_parts - 1)
    try:
        P.decode(parts, max_message_bytes=1 << 16)
    except P.ProtocolError as error:
        assert error.code in P.ERROR_CODES and error.message


@pytest.mark.parametrize("field, value", [
    ("v", 1.0), ("v", True), ("spacing_mm", [1e-300, 0.3]), ("spacing_mm", [0.3, 1e300]),
    ("fps", 1e300), ("t_acq_ns", -1), ("t_acq_ns", 2**64 - 1), ("seq", 2**64 - 1),
    ("stream", "a\x00b"), ("stream", "line\nbreak"), ("t_send_ns", -5)])
def test_impossible_frame_fields_are_refused(field, value):
    """Issue 14's probe: these were accepted. Each is refused (the fast path and the full
    validation agree)."""
    parts = with_header(P.encode(frame()), **{field: value})
    error = code_of(parts)
    assert error.code in ("bad_field", "unsupported_version"), (field, value, error)


def test_a_long_error_message_is_cut_and_still_decodes():
    message = P.ErrorMessage(code="stage_failed", message="x" * 5000, stream="s", seq=1)
    assert len(message.message) <= 1000 and message.message.endswith("(4040 more characters)")
    back = P.decode(P.encode(message))
    assert back.message == message.message
    multi_line = P.decode(P.encode(P.ErrorMessage(code="stage_failed", message="a\nb")))
    assert multi_line.message == "a\nb"
