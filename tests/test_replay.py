"""Replay: clip -> timed messages, pacing, loops, and clips that cannot be sent as they are;
a stack slice after slice, into a real side-car over loopback."""

import shutil
import time

import numpy as np
import pytest

from streamer.apps import AnalysisConfig, build_analysis
from streamer.cli import main
from streamer.io.clips import open_clip, open_input
from streamer.io.protocol import decode, encode
from streamer.io.sockets import ResultSubscriber, SubscriberConfig
from streamer.replay import (
    ReplayConfig,
    ReplayError,
    clip_messages,
    replay,
    source_messages,
    stack_messages,
)
from streamer.sidecar import SideCar, SideCarConfig
from streamer.vocab import AHA_SEGMENTS


class ListSender:
    """Collects what replay sends, through the real encoder/decoder."""

    def __init__(self):
        self.sent, self.times = [], []

    def send(self, message, block=True):
        self.times.append(time.monotonic())
        self.sent.append(decode(encode(message)))


def test_start_frames_end_with_clip_timing(npz_clip):
    with open_clip(npz_clip) as reader:
        timed = list(clip_messages(reader, ReplayConfig(stream="x"), t0_ns=10**18))
    kinds = [t.message.kind for t in timed]
    assert kinds == ["start"] + ["frame"] * 12 + ["end"]
    frames = [t.message for t in timed[1:-1]]
    assert [f.seq for f in frames] == list(range(12))
    assert [round(t.due_s, 6) for t in timed[1:-1]] == [round(i / 50, 6) for i in range(12)]
    assert frames[3].t_acq_ns == 10**18 + int(3 / 50 * 1e9)
    assert frames[0].spacing_mm == (0.3, 0.3) and frames[0].fps == 50.0
    start, end = timed[0].message, timed[-1].message
    assert start.meta["n_frames"] == 12 and start.meta["fps"] == 50.0 and end.n_frames == 12


def test_no_path_and_no_file_name_leave_unless_asked(tmp_path, npz_clip):
    """Issue 14: the start message carried the clip's absolute path and the stream was named
    after the file (patient names in file names leaked). Now neither, unless
    keep_identifiers: the default name is a hash of the path, the same for the same file."""
    patient = tmp_path / "DOE^JANE_1960-01-01"
    patient.mkdir()
    clip = shutil.copy(npz_clip, patient / "DOE_JANE.npz")
    with open_clip(clip) as reader:
        start = next(clip_messages(reader, ReplayConfig())).message
        again = next(clip_messages(reader, ReplayConfig())).message
        kept = next(clip_messages(reader, ReplayConfig(keep_identifiers=True))).message
    header = bytes(encode(start)[0])
    assert b"DOE" not in header and b"1960" not in header and "source" not in start.meta
    assert start.stream.startswith("clip-") and len(start.stream) == 13
    assert again.stream == start.stream  # the same file, the same stream name
    assert kept.stream == "DOE_JANE" and kept.meta["source"] == str(clip)


def test_loops_continue_sequence_and_time(npz_clip):
    with open_clip(npz_clip) as reader:
        timed = list(clip_messages(reader, ReplayConfig(loop=3)))
    frames = [t for t in timed if t.message.kind == "frame"]
    assert [t.message.seq for t in frames] == list(range(36))
    dues = np.array([t.due_s for t in frames])
    np.testing.assert_allclose(np.diff(dues), 1 / 50, atol=1e-9)


def test_fps_override_and_max_frames(npz_clip):
    with open_clip(npz_clip) as reader:
        timed = list(clip_messages(reader, ReplayConfig(fps=10.0, max_frames=5, loop=2)))
    frames = [t for t in timed if t.message.kind == "frame"]
    assert len(frames) == 5 and frames[-1].due_s == pytest.approx(0.4)
    assert timed[-1].message.n_frames == 5


def test_replay_paces_at_the_clip_rate(npz_clip):
    sender = ListSender()
    with open_clip(npz_clip) as reader:
        stats = replay(reader, sender, ReplayConfig())
    assert stats.frames == 12
    frame_times = np.array(sender.times[1:-1])
    assert frame_times[-1] - frame_times[0] >= 11 / 50 - 0.005  # 220 ms of clip
    fast = ListSender()
    with open_clip(npz_clip) as reader:
        replay(reader, fast, ReplayConfig(max_rate=True))
    assert fast.times[-2] - fast.times[1] < 11 / 50 / 2


def test_clips_without_spacing_fps_or_modality_say_what_to_pass(tmp_path):
    path = tmp_path / "bare.npz"
    np.savez(path, frames=np.zeros((2, 4, 4), np.uint8))
    with open_clip(path) as reader:
        with pytest.raises(ReplayError, match="--modality|--spacing-mm|--fps"):
            list(clip_messages(reader))
    with open_clip(path) as reader:
        with pytest.raises(ReplayError, match="--spacing-mm"):
            list(clip_messages(reader, ReplayConfig(modality="US")))
    with open_clip(path, spacing_mm=(0.5, 0.5)) as reader:
        with pytest.raises(ReplayError, match="--fps"):
            list(clip_messages(reader, ReplayConfig(modality="US")))
    with open_clip(path, spacing_mm=(0.5, 0.5), fps=20.0) as reader:
        assert len(list(clip_messages(reader, ReplayConfig(modality="MR")))) == 4


def test_a_clip_with_named_channels_announces_them_and_its_venc_in_its_start(tmp_path):
    """Velocity mapping: the start names the channels (the routing reads them before the
    first frame) and the velocity encoding in cm/s (the phantoms write venc_mm_s)."""
    import json

    path = tmp_path / "vm.npz"
    np.savez(path, frames=np.zeros((2, 4, 4, 4), np.float32), spacing_mm=np.array([1.0, 1.0]),
             fps=np.array(10.0), modality=np.array("MR"),
             channels=np.array(["magnitude", "v_x", "v_y", "v_z"]),
             metadata_json=np.array(json.dumps({"venc_mm_s": 150.0})))
    with open_clip(path) as reader:
        start, frame, *_ = [t.message for t in clip_messages(reader)]
    assert start.meta["channels"] == ["magnitude", "v_x", "v_y", "v_z"]
    assert start.meta["venc_cm_s"] == 15.0 and frame.channels == ("magnitude", "v_x", "v_y", "v_z")


def test_float64_frames_go_out_as_float32_and_bad_config_is_refused(tmp_path):
    path = tmp_path / "f64.npz"
    np.savez(path, frames=np.zeros((1, 4, 4), np.float64), spacing_mm=np.array([1.0, 1.0]),
             fps=np.array(10.0), modality=np.array("MR"))
    with open_clip(path) as reader:
        [_, frame, _] = [t.message for t in clip_messages(reader)]
    assert frame.pixels.dtype == np.float32
    for bad in (dict(fps=0), dict(loop=0), dict(modality="CT"), dict(max_frames=0)):
        with pytest.raises(ReplayError):
            ReplayConfig(**bad)


# -- short-axis stacks: slice after slice, each slice its own stream ---------------


def test_a_stack_goes_out_slice_after_slice_each_slice_a_stream(write_nifti_stack, tmp_path):
    data = np.random.default_rng(2).integers(0, 900, (6, 5, 3, 4)).astype(np.int16)  # x, y, z, t
    path = write_nifti_stack(tmp_path / "sax.nii.gz", data, (1.5, 1.25, 8.0, 40.0))
    with open_input(path) as stack:
        timed = list(stack_messages(stack, ReplayConfig(modality="MR"), t0_ns=0))
        stack_id = stack.info.stack_id
    messages = [t.message for t in timed]
    assert [(m.kind, m.stream) for m in messages if m.kind != "frame"] == [
        (kind, f"stack-{stack_id}/slice-{k}") for k in range(3) for kind in ("start", "end")]
    frames = [m for m in messages if m.kind == "frame"]
    assert [f.stream for f in frames] == [f"stack-{stack_id}/slice-{k}" for k in range(3)
                                          for _ in range(4)]
    assert [f.seq for f in frames] == [p for _ in range(3) for p in range(4)]
    assert [f.phase_index for f in frames] == [p for _ in range(3) for p in range(4)]
    assert [f.trigger_time_ms for f in frames[:4]] == pytest.approx([0.0, 40.0, 80.0, 120.0])
    # as a scanner: slice K+1 one frame interval after slice K's last frame, times continuing
    dues = [t.due_s for t in timed if t.message.kind == "frame"]
    np.testing.assert_allclose(dues, np.arange(12) * 0.04, atol=1e-9)
    assert [f.t_acq_ns for f in frames] == [int(round(d * 1e9)) for d in dues]
    np.testing.assert_array_equal(frames[6].pixels, data[:, :, 1, 2].T)
    start = messages[0]
    assert start.meta["stack_id"] == stack_id and start.meta["n_slices"] == 3
    assert start.meta["n_phases"] == 4 and start.meta["slice_index"] == 0
    assert start.meta["slice_position_mm"] == pytest.approx(30.0)
    assert start.meta["slice_thickness_mm"] == 8.0
    assert start.meta["image_orientation_patient"] == pytest.approx([-1, 0, 0, 0, -1, 0])
    # the messages survive the wire
    sent = ListSender()
    for m in messages:
        sent.send(m)
    assert sent.sent[1].phase_index == 0 and sent.sent[2].trigger_time_ms == pytest.approx(40.0)
    assert sent.sent[0].meta["slice_index"] == 0
    with open_input(path) as stack:  # --max-frames and --stream act on each slice's stream
        short = [t.message for t in stack_messages(stack, ReplayConfig(modality="MR", max_frames=2,
                                                                       stream="x"))]
    assert [(m.kind, m.stream) for m in short][:4] == [
        ("start", "x/slice-0"), ("frame", "x/slice-0"), ("frame", "x/slice-0"), ("end", "x/slice-0")]
    assert len(short) == 12


def test_a_single_clip_goes_out_as_before(npz_clip):
    with open_input(npz_clip) as reader:
        messages = [t.message for t in source_messages(reader, ReplayConfig(stream="x"))]
    assert {m.stream for m in messages} == {"x"}
    assert all(m.phase_index is None and m.trigger_time_ms is None
               for m in messages if m.kind == "frame")
    assert "stack_id" not in messages[0].meta


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_real_stack_replayed_into_a_side_car_gives_one_result_per_image(
        sunnybrook_series, tmp_path, capsys):
    """The Sunnybrook series (12 slices x 20 phases) by `cardiostream replay` into a lossless
    side-car over loopback: 12 streams stack-ID/slice-K, one after the other, 20 results
    and one beat message each (closed at the last phase), mid-ventricular slices with
    segment strains. A broken copy first (a phase missing): refused with the file named,
    and the side-car serves on."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("221.dcm", "222.dcm", "223.dcm", "201.dcm", "202.dcm"):
        shutil.copy(sunnybrook_series / name, broken / name)
    config = SideCarConfig(ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", lossless=True)
    with SideCar(config, build_analysis(AnalysisConfig(app="mr-sax"))) as sidecar, \
            ResultSubscriber(SubscriberConfig(sidecar.publish_endpoint)) as subscriber:
        replay_args = ["--to", sidecar.ingest_endpoint, "--max-rate", "--quiet"]
        assert main(["replay", str(broken), *replay_args]) == 2
        error = capsys.readouterr().err
        assert f"{broken}: slice 1 " in error and "has 2 phases where other slices have 3" in error
        assert main(["replay", str(sunnybrook_series), *replay_args]) == 0
        messages, ends = [], 0
        while ends < 12:  # 12 x (start, 20 results, beat, end)
            message = subscriber.recv(timeout_s=30)
            assert message is not None, "the side-car stopped answering"
            messages.append(message)
            ends += message.kind == "end"
    starts = [m for m in messages if m.kind == "start"]
    [stack_id] = {m.meta["stack_id"] for m in starts}
    names = [f"stack-{stack_id}/slice-{k}" for k in range(12)]
    assert [m.stream for m in starts] == names  # not the folder's name: it may name a patient
    assert [m.meta["slice_index"] for m in starts] == list(range(12))
    positions = [m.meta["slice_position_mm"] for m in starts]
    assert positions == sorted(positions) and all(m.meta["slice_thickness_mm"] == 10.0 for m in starts)
    assert all(len(m.meta["image_orientation_patient"]) == 6 and m.meta["app"]["name"] == "mr-sax"
               for m in starts)
    results = [m for m in messages if m.kind == "result"]
    assert len(results) == 240  # one per image
    for name in names:
        mine = [r for r in results if r.stream == name]
        assert [r.seq for r in mine] == list(range(20))
        assert all(r.app == "mr-sax" and r.fields["areas_mm2"] is not None for r in mine)
    beats = [m for m in messages if m.kind == "beat"]
    assert [b.stream for b in beats] == names
    assert all(b.fields["closed_by"] == "last_phase" and b.fields["ed_seq"] == 0 for b in beats)
    good = [b for b in beats if b.fields["quality"] == "good"]
    assert good, "no slice of the real stack gave a good beat"
    for beat in good:
        assert -45 < beat.fields["peak_circumferential_strain_pct"] < 0
    with_segments = [b for b in good if b.fields["segment_peak_circumferential_strain_pct"]]
    assert with_segments, "no good beat found the RV insertion points"
    for beat in with_segments:
        assert set(beat.fields["segment_peak_circumferential_strain_pct"]) <= {
            str(s) for s in AHA_SEGMENTS[beat.fields["aha_level"]]}
    assert [m.stream for m in messages if m.kind == "end"] == names
    assert all(m.meta["processed"] == 20 for m in messages if m.kind == "end")
    assert not [m for m in messages if m.kind == "error"]


def test_a_phantom_heart_replayed_into_a_side_car_gives_its_wall_motion_per_stack_beat(
        phantom_heart_nifti):
    """Issue 16, acceptance 5: a held-out phantom heart (apical, mid and basal slices of 20
    phases, as a NIfTI stack whose patient axes put the anterior up) replayed twice into a
    lossless side-car over loopback: after each replay's third slice, a wall_motion message
    on the stack's stream with all 16 segments scored, numbered per stack beat."""
    path, _ = phantom_heart_nifti()
    config = SideCarConfig(ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", lossless=True)
    with SideCar(config, build_analysis(AnalysisConfig(app="mr-sax"))) as sidecar, \
            ResultSubscriber(SubscriberConfig(sidecar.publish_endpoint)) as subscriber:
        walls = []
        for _ in range(2):
            assert main(["replay", str(path), "--to", sidecar.ingest_endpoint, "--max-rate",
                         "--quiet", "--modality", "MR", "--stream", "heart"]) == 0
            ends = 0
            while ends < 3:
                message = subscriber.recv(timeout_s=60)
                assert message is not None, "the side-car stopped answering"
                assert message.kind != "error", message
                ends += message.kind == "end"
                if message.kind == "wall_motion":
                    walls.append(message)
    assert [(w.stream, w.beat) for w in walls] == [("heart", 0), ("heart", 1)]
    first = walls[0].fields
    assert first["scored_segments"] == 16 and len(first["segments"]) == 16
    assert 1.0 <= first["msi"] <= 4.0 and first["frames"] == 20
    assert first["slices"] == {"basal": 2, "mid": 1, "apical": 0}
    assert walls[1].fields["segments"] == first["segments"]   # the same beat again


def test_replay_into_a_side_car_that_goes_away_stops_with_an_error(npz_clip, capsys):
    """Issue 14: replay blocked for ever once the side-car was gone. Here the side-car's
    ingest takes three messages and closes: replay exits 2 within its send timeout and
    says how many messages may be lost."""
    import threading

    import zmq

    from streamer.io.sockets import bind

    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    endpoint = bind(pull, "tcp://127.0.0.1:*")

    def side_car_that_stops():
        for _ in range(3):
            pull.recv_multipart()
        pull.close(linger=0)

    thread = threading.Thread(target=side_car_that_stops)
    thread.start()
    try:
        rc = main(["replay", str(npz_clip), "--to", endpoint, "--loop", "500", "--max-rate",
                   "--send-timeout-s", "0.5", "--quiet"])
    finally:
        thread.join(5)
        context.term()
    err = capsys.readouterr().err
    assert rc == 2 and "took no message for 0.5 s" in err and "may not have been delivered" in err
