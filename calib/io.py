"""Write phantom clips and their truth; remake a clip exactly from what was written.

``write_phantom(clip, "out/a4c.dcm")`` writes

* the clip through :func:`streamer.io.clips.write_clip` (format by suffix: ``.dcm``
  multi-frame DICOM with pixel spacing and frame time, ``.nii`` / ``.nii.gz``, ``.npz``),
  with the generator parameters and seed as JSON metadata inside the file;
* ``out/a4c.truth.npz`` beside it: every truth array plus ``params_json`` (the same JSON).

MR clips carry magnitude plus three velocity channels; ``.nii``/``.npz`` keep all four
(float32, channels ``magnitude, v_col_mm_s, v_row_mm_s, v_through_mm_s``), DICOM holds
the magnitude only (uint16) and the velocities stay in the truth file.
``remake(path)`` regenerates the identical clip from either file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CALIB_FORMAT_VERSION = 1


def truth_path_for(clip_path) -> Path:
    """``dir/name.dcm`` / ``dir/name.nii.gz`` -> ``dir/name.truth.npz``."""
    p = Path(clip_path)
    name = p.name
    for suf in (".nii.gz", ".nii", ".dcm", ".dicom", ".npz"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    else:
        name = p.stem
    return p.with_name(name + ".truth.npz")


def _metadata(clip) -> dict:
    md = dict(clip.metadata)
    md["calib_format_version"] = CALIB_FORMAT_VERSION
    return md


def write_phantom(clip, out) -> tuple[Path, Path]:
    """Write ``clip`` (EchoClip or MRClip) and its truth; returns (clip path, truth path)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = _metadata(clip)
    suffix = out.name.lower()
    is_dicom = suffix.endswith(".dcm") or suffix.endswith(".dicom")
    frames, channels = clip.frames, None
    modality = getattr(clip, "modality", "US")
    if getattr(clip, "velocity_mm_s", None) is not None and not is_dicom:
        frames = np.concatenate([clip.frames.astype(np.float32)[..., None],
                                 clip.velocity_mm_s.astype(np.float32)], axis=-1)
        channels = ("magnitude", "v_col_mm_s", "v_row_mm_s", "v_through_mm_s")
    try:
        from streamer.io.clips import write_clip
    except ImportError:                               # pragma: no cover - io not installed
        write_clip = None
    if write_clip is not None:
        path = Path(write_clip(out, frames, spacing_mm=tuple(float(s) for s in clip.spacing_mm),
                               fps=float(clip.fps), modality=modality, metadata=md,
                               channels=channels))
    else:                                             # pragma: no cover
        path = out if suffix.endswith(".npz") else out.with_suffix(".npz")
        np.savez_compressed(path, frames=frames, spacing_mm=np.asarray(clip.spacing_mm),
                            fps=np.float64(clip.fps), modality=np.array(modality),
                            metadata_json=np.array(json.dumps(md)))
    tpath = truth_path_for(path)
    arrays = clip.truth.arrays()
    np.savez_compressed(tpath, params_json=np.array(json.dumps(md, sort_keys=True)),
                        spacing_mm=np.asarray(clip.spacing_mm, dtype=np.float64),
                        fps=np.float64(clip.fps), **arrays)
    return path, tpath


def read_truth(path) -> dict:
    """Truth arrays of a clip (pass the clip or the truth file); ``params`` is the parsed JSON."""
    p = Path(path)
    if not p.name.endswith(".truth.npz"):
        p = truth_path_for(p)
    with np.load(p, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    out["params"] = json.loads(str(out.pop("params_json")))
    return out


def params_of(path) -> dict:
    """The generator metadata (kind, params incl. seed) from a truth file or a clip file."""
    p = Path(path)
    if p.name.endswith(".truth.npz"):
        return read_truth(p)["params"]
    tp = truth_path_for(p)
    if tp.exists():
        return read_truth(tp)["params"]
    from streamer.io.clips import open_clip
    with open_clip(p) as r:
        return dict(r.info.metadata)


def remake(path_or_params):
    """Regenerate a clip exactly from a written clip, its truth file, or the metadata dict."""
    md = path_or_params if isinstance(path_or_params, dict) else params_of(path_or_params)
    kind = md.get("phantom")
    if kind == "echo":
        from calib.echo import EchoPhantomConfig, make_echo_clip
        return make_echo_clip(EchoPhantomConfig.from_dict(md["params"]))
    if kind == "mr":
        from calib.mr import MRPhantomConfig, make_mr_clip
        return make_mr_clip(MRPhantomConfig.from_dict(md["params"]))
    raise ValueError(f"not a calib phantom (phantom={kind!r})")
