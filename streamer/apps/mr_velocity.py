"""The myocardial velocity-mapping app (tissue phase mapping): 3D-EAR segmentation of the LV
myocardium over a slice's cycle and its radial, circumferential and longitudinal
velocities (issue 17).

Routed by ``modality: "MR"`` **and** velocity channels: a stream whose start (or first
frame) names magnitude and three velocity channels (``channels``:
:func:`streamer.measure.velocity.velocity_channels`) comes here; other MR streams go to the
short-axis app. Each slice is its own stream (``NAME/slice-K``), as in the short-axis path;
a velocity-mapping cine covers one cardiac cycle, frame 0 at end-diastole (ECG-triggered).
In the order of the method::

    SplitChannels -> CentralRegion -> FollowCycle                              (per frame)
    MeasureVelocities                                                     (per slice cycle)

- :class:`SplitChannels`: the frame's magnitude and velocities in cm/s (v_x along +columns,
  v_y along +rows, v_z through-plane towards the apex), checked: a frame without the
  four channels, or with NaN or infinite values, is refused with an error and the stream
  goes on.
- :class:`CentralRegion`: both resampled to the network's region (128 x 128 pixels of 1.4
  mm around the image centre, :func:`streamer.measure.roi.central_roi`).
- :class:`FollowCycle`: which frame of the cycle this is; the cycle closes at its last
  frame (the start's ``n_phases`` for a stack's slice, else its ``n_frames``: one cine is
  one cycle; a looped replay gives one cycle per loop) or when the phase index wraps.
- :class:`MeasureVelocities`, once per closed cycle: 3D-EAR over the cycle's frames (eager
  torch fp32 on the CPU), the 3D-EAR pipeline's morphological post-processing per frame
  (largest connected piece, small holes filled), the background phase offset fitted on
  static tissue and removed, phase wraps undone in time within the myocardium, then the
  global and per-AHA-segment velocity curves and their peaks
  (:mod:`streamer.measure.velocity`). Segments need the slice's level (its third of the
  stack or ``--vm-level``) and take the anterior RV insertion point at
  ``--vm-insertion-offset-deg`` from the patient's anterior (the labels hold no RV).

Per-frame results carry where the frame sits in its cycle; everything measured comes with
the cycle's beat message (the network needs the whole cycle), whose ``labels`` array part
(with ``--vm-labels``) holds every frame's myocardium (label 2, as the short-axis path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from streamer.app import (
    BEAT_CLOSED,
    App,
    BeatBoundary,
    BeatFrames,
    BeatStage,
    Field,
    FrameRejected,
    Stage,
)
from streamer.apps.mr_sax import anterior_direction
from streamer.io.protocol import FrameMessage
from streamer.measure.roi import VM_ROI_SPACING_MM, LvRoi, central_roi, region_velocity
from streamer.measure.sax import sax_levels
from streamer.measure.velocity import (
    CURVES,
    VelocityChannelError,
    aha_segments_by_anterior,
    correct_background_offset,
    end_systole_frame,
    peak_velocities,
    postprocess_myocardium,
    unwrap_in_time,
    velocity_channels,
    velocity_curves,
    velocity_encoding_cm_s,
)
from streamer.options import option
from streamer.vocab import SAX_LEVELS, MRLabel

#: peak names on the beat message, in order (streamer.measure.velocity.peak_velocities)
PEAKS = tuple(f"peak_{phase}_{curve}_velocity_cm_s"
              for curve in CURVES for phase in ("systolic", "early_diastolic", "late_diastolic"))
#: a cycle whose myocardial phase is rougher than this after unwrapping (the median step
#: between frames, in VENC; streamer.measure.velocity.unwrap_in_time) is not measured: its
#: phase is noise, not velocity (all wrapped, or a wrong VENC)
MAX_PHASE_ROUGHNESS = 0.25


@dataclass(frozen=True)
class VelocityMappingConfig:
    """The velocity-mapping app's options."""

    weights: str | None = option(
        None, "3D-EAR weights, a state dict from python -m engines.train.velocity (default: "
        "the shipped engines/weights/velocity.pt)", flag="--velocity-weights", metavar="PATH")
    level: str = option(
        "auto", "AHA level of each velocity-mapping slice: auto = its third of the stack "
        "(slice_index of n_slices in the stream's start; none for a lone slice: no segment "
        "curves), or basal, mid, apical", flag="--vm-level", choices=("auto", *SAX_LEVELS))
    insertion_offset_deg: float = option(
        30.0, "where the segments start: the anterior RV insertion point is taken this many "
        "degrees from the patient's anterior towards the septum (the network labels no RV)",
        flag="--vm-insertion-offset-deg", metavar="DEG")
    venc_cm_s: float | None = option(
        None, "velocity encoding, cm/s, for streams whose start does not say (venc_cm_s); "
        "without it phase wraps are not undone (flag venc_unknown)", flag="--vm-venc-cm-s",
        metavar="CM_S")
    send_labels: bool = option(
        False, "send every frame's myocardium (uint8 label 2, the frame's rows and columns) "
        "as the cycle's beat message array part labels", flag="--vm-labels")

    def __post_init__(self):
        if self.level not in ("auto", *SAX_LEVELS):
            raise ValueError(f"level {self.level!r} is not auto or one of {SAX_LEVELS}")
        if self.venc_cm_s is not None and not self.venc_cm_s > 0:
            raise ValueError(f"--vm-venc-cm-s must be > 0, got {self.venc_cm_s}")


def stream_venc_cm_s(meta: dict, config: VelocityMappingConfig) -> float | None:
    """The stream's VENC in cm/s: its start's ``venc_cm_s`` (or ``venc_mm_s``), else the
    configured one, else None."""
    venc = velocity_encoding_cm_s(meta)
    return config.venc_cm_s if venc is None else venc


class SplitChannels(Stage):
    """Frame -> ``magnitude`` (rows, cols) float32 and ``velocity_cm_s`` (rows, cols, 3);
    refuses a frame without the four channels or with non-finite values."""

    name = "channels"
    inputs = ("frame",)
    outputs = ("magnitude", "velocity_cm_s")

    def __init__(self):
        self._map = None
        self._names = None

    def process(self, frame: FrameMessage) -> dict[str, Any]:
        if frame.channels != self._names:
            try:
                self._map = velocity_channels(frame.channels)
            except VelocityChannelError as exc:
                raise FrameRejected("bad_channels", f"frame {frame.stream}#{frame.seq}: {exc}") from None
            self._names = frame.channels
        magnitude, velocity = self._map.split(frame.pixels)
        bad = int(np.size(magnitude) - np.count_nonzero(np.isfinite(magnitude))) + int(
            np.size(velocity) - np.count_nonzero(np.isfinite(velocity)))
        if bad:
            raise FrameRejected("bad_pixels", f"frame {frame.stream}#{frame.seq} has {bad} NaN "
                                "or infinite value(s) in its magnitude or velocities")
        return {"magnitude": magnitude, "velocity_cm_s": velocity}


class CentralRegion(Stage):
    """Magnitude and velocities -> the same in the network's region (``region_magnitude``
    (S, S), ``region_velocity_cm_s`` (S, S, 3)) and the ``region`` map itself."""

    name = "region"
    inputs = ("frame", "magnitude", "velocity_cm_s")
    outputs = ("region", "region_magnitude", "region_velocity_cm_s")

    def __init__(self):
        self._roi: tuple[tuple, LvRoi] | None = None  # (frame shape and spacing, region)

    def process(self, frame: FrameMessage, magnitude, velocity_cm_s) -> dict[str, Any]:
        key = (magnitude.shape, tuple(frame.spacing_mm))
        if self._roi is None or self._roi[0] != key:
            self._roi = (key, central_roi(magnitude.shape, frame.spacing_mm))
        roi = self._roi[1]
        return {"region": roi, "region_magnitude": roi.images(magnitude),
                "region_velocity_cm_s": region_velocity(roi, velocity_cm_s[None])[0]}


class FollowCycle(Stage):
    """-> ``beat`` (the cycle's number), ``cycle_frame`` (this frame's place in it, 0 at
    end-diastole), ``venc_cm_s`` (the stream's), ``beat_closed`` at the cycle's last frame
    (module docstring) and ``cycle_sample`` (what the cycle's measurement keeps)."""

    name = "cycle"
    inputs = ("frame", "stream_meta", "region", "region_magnitude", "region_velocity_cm_s")
    outputs = ("beat", "cycle_frame", "venc_cm_s", "cycle_sample", BEAT_CLOSED)

    def __init__(self, config: VelocityMappingConfig):
        self.config = config
        self.beat_index = 0
        self.start_seq: int | None = None
        self.last_phase: int | None = None
        # what the stream's start says once: VENC, AHA level, anterior (screen angle)
        self._context: tuple[float | None, str | None, float] | None = None

    def _stream_context(self, meta: dict) -> tuple[float | None, str | None, float]:
        if self._context is None:
            up = anterior_direction(meta)
            self._context = (stream_venc_cm_s(meta, self.config), slice_level(meta, self.config),
                             float(np.arctan2(-up[0], up[1])))
        return self._context

    def process(self, frame: FrameMessage, stream_meta: dict, region: LvRoi, region_magnitude,
                region_velocity_cm_s) -> dict[str, Any]:
        n = stream_meta.get("n_phases") or stream_meta.get("n_frames")
        n = n if isinstance(n, int) and n > 1 else None
        phase = frame.phase_index if frame.phase_index is not None else (
            frame.seq % n if n else frame.seq)
        closed = None
        flags = []
        if self.last_phase is not None and phase <= self.last_phase and self.start_seq is not None:
            # the phase wrapped before the last frame was seen: the open cycle is cut
            closed = self._close(frame.seq - 1, "next_ed")
        self.last_phase = phase
        if self.start_seq is None:
            self.start_seq = frame.seq
        beat = self.beat_index
        if n is not None and phase == n - 1:
            closed = closed or self._close(frame.seq, "last_phase")
        venc, level, anterior_rad = self._stream_context(stream_meta)
        if venc is None:
            flags.append("venc_unknown")
        sample = CycleFrame(int(phase), region_magnitude, region_velocity_cm_s, region,
                            tuple(frame.pixels.shape[:2]), venc, level, anterior_rad)
        return {"beat": beat, "cycle_frame": int(phase), "venc_cm_s": venc,
                "cycle_sample": sample, BEAT_CLOSED: closed, "flags": flags}

    def _close(self, end_seq: int, closed_by: str) -> BeatBoundary:
        boundary = BeatBoundary(self.beat_index, self.start_seq, end_seq, {"closed_by": closed_by})
        self.beat_index += 1
        self.start_seq = None
        return boundary


@dataclass
class CycleFrame:
    """What the cycle's measurement keeps of a frame: its place in the cycle, the region's
    magnitude (S, S) and velocities (S, S, 3) cm/s, the region itself and the frame's shape
    (to bring the masks back), and from the stream's start the VENC (cm/s or None), the
    slice's AHA level (or None) and the patient's anterior (screen angle, rad)."""

    cycle_frame: int
    magnitude: np.ndarray
    velocity_cm_s: np.ndarray
    region: LvRoi
    frame_shape: tuple[int, int]
    venc_cm_s: float | None
    level: str | None
    anterior_rad: float


def slice_level(meta: dict, config: VelocityMappingConfig) -> str | None:
    """A slice's AHA level: ``--vm-level``, else its third of the stack by the start's
    ``slice_index`` / ``n_slices`` (base first unless the start's ``base_first`` is false);
    None for a slice the start does not place."""
    if config.level != "auto":
        return config.level
    n, k = meta.get("n_slices"), meta.get("slice_index")
    if not isinstance(n, int) or not isinstance(k, int) or not 0 <= k < n:
        return None
    return sax_levels(np.ones(n, bool), base_first=meta.get("base_first") is not False)[k]


class MeasureVelocities(BeatStage):
    """Per slice and cycle: the myocardium of every frame (3D-EAR), the velocity curves and
    their peaks (module docstring); ``quality`` good, or poor with ``velocity_status``
    saying why."""

    name = "velocities"
    keeps = ("cycle_sample",)
    outputs = ("frames", "es_frame", "es_seq", "velocity_status", "quality", "aha_level",
               "radial_velocity_cm_s", "circumferential_velocity_cm_s",
               "longitudinal_velocity_cm_s", "segment_velocity_cm_s",
               "segment_peak_velocity_cm_s", *PEAKS, "myocardium_area_mm2",
               "phase_unwrapped_share", "background_offset_cm_s", "venc_cm_s",
               "label_seqs", "labels")
    #: the most frames of one cycle it keeps (the region's magnitude and velocities: 256 kB
    #: a frame)
    max_frames = 256
    #: the fewest frames of a cycle it measures
    min_frames = 8
    trained_on = "velocity-mapping phantom slices (calib.datasets.velocity_mapping_config)"

    def __init__(self, segmenter, config: VelocityMappingConfig):
        self.segmenter, self.config = segmenter, config

    def process(self, beat: BeatFrames) -> dict[str, Any]:
        out: dict[str, Any] = dict.fromkeys(self.outputs)
        samples: list[CycleFrame] = beat.values["cycle_sample"]
        venc = samples[0].venc_cm_s if samples else None
        out["venc_cm_s"] = venc
        if beat.incomplete:
            return {**out, "quality": "poor", "velocity_status": "cycle_incomplete"}
        if not samples or samples[0].cycle_frame != 0 or beat.seqs[0] != beat.boundary.ed_seq:
            return {**out, "quality": "poor", "velocity_status": "not_from_end_diastole"}
        if [s.cycle_frame for s in samples] != list(range(len(samples))):
            # a frame of the cycle was refused (bad input) or lost: the network and the
            # curves would read a jump in time as motion
            return {**out, "quality": "poor", "velocity_status": "frames_missing"}
        if len(samples) < self.min_frames:
            return {**out, "quality": "poor", "velocity_status": "too_few_frames"}
        magnitude = np.stack([s.magnitude for s in samples])
        velocity = np.stack([s.velocity_cm_s for s in samples])
        p = self.segmenter(magnitude, velocity)
        myo = postprocess_myocardium(p > 0.5)
        out["frames"] = len(samples)
        if (myo.reshape(len(myo), -1).sum(1) < 20).any():
            return {**out, "quality": "poor", "velocity_status": "no_myocardium"}
        heart = cv2.dilate(myo.any(0).astype(np.uint8), np.ones((31, 31), np.uint8)) > 0
        corrected, offset = correct_background_offset(magnitude, velocity, exclude=heart)
        out["background_offset_cm_s"] = round(float(np.abs(offset[myo.any(0)]).max()), 3)
        if venc is not None:
            corrected, share, roughness = unwrap_in_time(corrected, venc, myo)
            out["phase_unwrapped_share"] = round(share, 4)
            if roughness > MAX_PHASE_ROUGHNESS:
                return {**out, "quality": "poor", "velocity_status": "phase_unreliable"}
        level = samples[0].level
        segments = None
        if level is not None:
            segments = aha_segments_by_anterior(myo, level, samples[0].anterior_rad,
                                                self.config.insertion_offset_deg)
        curves = velocity_curves(corrected, myo, segments)
        es = end_systole_frame(curves.radial)
        out.update(peak_velocities(curves, es))
        px = VM_ROI_SPACING_MM ** 2  # a region pixel, mm^2
        out.update(
            es_frame=es, es_seq=None if es is None else beat.seqs[es], aha_level=level,
            myocardium_area_mm2=round(float(curves.pixels.mean()) * px, 1),
            **{f"{name}_velocity_cm_s": [round(float(v), 3) for v in curves.curve(name)]
               for name in CURVES})
        if segments is not None:
            seg = {name: getattr(curves, f"segment_{name}") for name in CURVES}
            out["segment_velocity_cm_s"] = {
                str(aha): {name: [round(float(v), 3) for v in seg[name][:, j]] for name in CURVES}
                for j, aha in enumerate(curves.segment_ids)}
            out["segment_peak_velocity_cm_s"] = {}
            for j, aha in enumerate(curves.segment_ids):
                one = type(curves)(seg["radial"][:, j], seg["circumferential"][:, j],
                                   seg["longitudinal"][:, j], curves.pixels)
                out["segment_peak_velocity_cm_s"][str(aha)] = peak_velocities(one, es)
        out.update(quality="good" if es is not None else "poor",
                   velocity_status="measured" if es is not None else "no_end_systole")
        if self.config.send_labels:
            out["labels"] = np.stack([
                np.where(s.region.to_image(m.astype(np.float32), s.frame_shape) > 0.5,
                         np.uint8(MRLabel.LV_MYOCARDIUM), np.uint8(0))
                for s, m in zip(samples, myo)])
            out["label_seqs"] = list(beat.seqs[: len(samples)])
        return out


class VelocityMappingApp(App):
    """Myocardial velocity mapping (tissue phase mapping), one slice per stream: 3D-EAR
    myocardium over each cycle, and its radial, circumferential and longitudinal velocity
    curves and peaks, globally and per AHA segment."""

    name = "mr-velocity"
    modalities = ("MR",)
    roles = ()
    gate = "every frame (measured once per cycle)"
    Config = VelocityMappingConfig
    result_fields = (
        Field("cycle_frame", "integer", "the frame's place in its slice's cycle (0: "
              "end-diastole, the trigger)"),
        Field("beat", "integer", "number of the slice's cycle this frame belongs to (its "
              "measurement comes with the cycle's beat message)"),
        Field("venc_cm_s", "number", "the stream's velocity encoding, cm/s; null when "
              "unknown (flag venc_unknown: phase wraps are then not undone)"),
    )
    beat_fields = (
        Field("frames", "integer", "frames of the cycle measured"),
        Field("closed_by", "string", "last_phase (the cycle's last frame: the start's "
              "n_phases, else n_frames) or next_ed (the phase index wrapped first)"),
        Field("velocity_status", "string", "measured, or why not: cycle_incomplete, "
              "not_from_end_diastole, frames_missing (a frame of the cycle was refused or "
              "lost), too_few_frames, no_myocardium, phase_unreliable (the "
              "myocardium's phase is noise after unwrapping: all wrapped, or a wrong VENC), "
              "no_end_systole"),
        Field("quality", "string", "good (measured) or poor (velocity_status says why; no "
              "peaks, and no curves unless the status is no_end_systole)"),
        Field("es_frame", "integer", "end-systole, as a frame of the cycle: where the "
              "global radial velocity stops being inward"),
        Field("es_seq", "integer", "the end-systolic frame's seq"),
        Field("aha_level", "string", "the slice's AHA level (basal, mid, apical); null for "
              "a slice the start does not place (no segment curves)"),
        Field("radial_velocity_cm_s", "list", "global radial velocity of the myocardium per "
              "frame of the cycle, cm/s, positive inwards (contraction), the LV's in-plane "
              "translation removed"),
        Field("circumferential_velocity_cm_s", "list", "global circumferential velocity per "
              "frame, cm/s, positive counter-clockwise as viewed from the apex"),
        Field("longitudinal_velocity_cm_s", "list", "global through-plane velocity per "
              "frame, cm/s, positive towards the apex"),
        Field("segment_velocity_cm_s", "object", "per AHA segment {\"7\": {radial: [...], "
              "circumferential: [...], longitudinal: [...]}, ...}, cm/s"),
        Field("segment_peak_velocity_cm_s", "object", "per AHA segment, its peaks (the names "
              "of the global peak fields)"),
        *(Field(name, "number", f"{name.split('_velocity')[0].replace('_', ' ')} velocity "
                "of the global curve, cm/s (systole: ED to ES; early diastole: the first half "
                "after ES; late diastole: the cycle's last quarter)") for name in PEAKS),
        Field("myocardium_area_mm2", "number", "mean myocardial area over the cycle, mm^2"),
        Field("phase_unwrapped_share", "number", "share of the myocardium's pixel-frames "
              "whose phase wrap was undone; null without a VENC"),
        Field("background_offset_cm_s", "number", "largest background phase offset removed "
              "in the myocardium, cm/s"),
        Field("venc_cm_s", "number", "the velocity encoding used, cm/s"),
        Field("label_seqs", "list", "the seq of each frame of the labels array part"),
        Field("labels", "array", "uint8 myocardium of every frame of the cycle (label 2, the "
              "frame's rows and columns), (frames, rows, cols); with --vm-labels"),
    )

    def __init__(self, config=None, engines=None):
        from engines.velocity import load_segmenter

        config = self.Config() if config is None else config
        self.segmenter = load_segmenter(config.weights)
        super().__init__(config, engines)

    @classmethod
    def takes(cls, channels) -> bool:
        """Velocity-mapping streams only: magnitude and three velocity channels."""
        try:
            velocity_channels(channels)
        except VelocityChannelError:
            return False
        return True

    def stages(self) -> list[Stage]:
        return [SplitChannels(), CentralRegion(), FollowCycle(self.config)]

    def beat_stages(self) -> list[BeatStage]:
        return [MeasureVelocities(self.segmenter, self.config)]

    def declaration(self) -> dict:
        """The app's declaration; its ``engines`` name the per-cycle 3D-EAR (eager torch fp32
        on the CPU)."""
        out = super().declaration()
        out["engines"]["velocity"] = {**self.segmenter.provenance(),
                                      "variant": self.segmenter.variant,
                                      "trained_on": MeasureVelocities.trained_on}
        return out
