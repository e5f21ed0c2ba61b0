"""The MR trainer (engines.train.mr): Qin et al.'s losses on known inputs, the partial labels
of the real contours, the evaluation helpers, and a tiny seeded run on synthetic cines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engines.nets import mr_joint
from engines.train import mr
from streamer.vocab import MRLabel


def _blob_image(h=48, w=48, margin=8, seed=0):
    """A smooth image whose content sits inside a zero margin (shifts stay inside)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(1, 1, (h - 2 * margin) // 4, (w - 2 * margin) // 4, generator=g),
                      size=(h - 2 * margin, w - 2 * margin), mode="bicubic", align_corners=False)
    return F.pad(x.clamp(0, 1), (margin, margin, margin, margin))[0, 0]


# ------------------------------------------------------------------ motion loss
def test_motion_loss_is_zero_for_a_perfect_warp_and_positive_otherwise():
    img = _blob_image()
    shift = (2, -3)                                            # (dx, dy) px, frame t -> t+1
    frames = torch.stack([img, torch.roll(img, shifts=(shift[1], shift[0]), dims=(0, 1))])[None]
    flows = torch.zeros(1, 1, 2, 48, 48)
    flows[:, :, 0], flows[:, :, 1] = shift[0], shift[1]
    loss, parts = mr.motion_loss(frames, flows, smooth_spatial=1.0, smooth_temporal=1.0)
    assert abs(float(loss)) < 1e-7                            # float rounding of the sampler
    wrong, _ = mr.motion_loss(frames, torch.zeros_like(flows), 1.0, 1.0)
    assert float(wrong) > 1e-4
    rough = flows + 0.5 * torch.randn(flows.shape, generator=torch.Generator().manual_seed(1))
    _, p = mr.motion_loss(frames, rough, 1.0, 1.0)
    assert p["smooth_spatial"] > 0 and p["mse"] > 0


def test_temporal_smoothness_penalises_a_change_of_flow():
    frames = torch.zeros(1, 3, 32, 32)
    same = torch.ones(1, 2, 2, 32, 32)
    changing = same.clone()
    changing[:, 1] = 2.0
    _, a = mr.motion_loss(frames, same, 0.0, 1.0)
    _, b = mr.motion_loss(frames, changing, 0.0, 1.0)
    assert a["smooth_temporal"] == 0.0 and b["smooth_temporal"] > 0.0
    assert float(mr.pseudo_huber(torch.tensor(0.0))) == 0.0


# ------------------------------------------------------------------ segmentation losses
def _logits_for(labels: torch.Tensor, margin: float = 40.0) -> torch.Tensor:
    return F.one_hot(labels, 4).permute(0, 3, 1, 2).float() * margin


def test_partial_label_loss_is_zero_for_perfect_logits_and_positive_otherwise():
    lab = torch.zeros(2, 16, 16, dtype=torch.long)
    lab[:, 4:12, 4:12] = MRLabel.LV_MYOCARDIUM
    lab[:, 6:10, 6:10] = MRLabel.LV_CAVITY
    lab[:, :, :2] = MRLabel.RV_CAVITY
    assert float(mr.partial_label_loss(_logits_for(lab), lab)) == pytest.approx(0.0, abs=1e-6)
    wrong = lab.clone()
    wrong[lab == MRLabel.LV_CAVITY] = MRLabel.LV_MYOCARDIUM
    assert float(mr.partial_label_loss(_logits_for(wrong), lab)) > 1.0


def test_partial_labels_accept_background_or_rv_and_anything_but_cavity():
    pred = torch.zeros(1, 8, 8, dtype=torch.long)
    pred[:, :, :4] = MRLabel.RV_CAVITY                       # RV where the contours say nothing
    codes = torch.full((1, 8, 8), mr.BG_OR_RV, dtype=torch.long)
    assert float(mr.partial_label_loss(_logits_for(pred), codes, dice_weight=0)) < 1e-6
    codes[:] = mr.NOT_CAVITY                                  # end-systole outside the endocardium
    pred[:, :, 4:] = MRLabel.LV_MYOCARDIUM
    assert float(mr.partial_label_loss(_logits_for(pred), codes)) < 1e-6
    pred[:, :2] = MRLabel.LV_CAVITY
    assert float(mr.partial_label_loss(_logits_for(pred), codes)) > 1.0
    ignored = torch.full((1, 8, 8), mr.IGNORE, dtype=torch.long)
    assert float(mr.partial_label_loss(_logits_for(pred), ignored)) == 0.0


def test_warped_segmentation_loss():
    lab = torch.zeros(1, 2, 16, 16, dtype=torch.long)
    lab[:, :, 4:10, 4:10] = MRLabel.LV_CAVITY
    logits = _logits_for(lab.reshape(2, 16, 16)).reshape(1, 2, 4, 16, 16)
    flows = torch.zeros(1, 1, 2, 16, 16)
    assert float(mr.warped_segmentation_loss(logits, flows)) == pytest.approx(0.0, abs=1e-6)
    moved = lab.clone()
    moved[:, 1] = torch.roll(lab[:, 1], shifts=3, dims=-1)   # frame t+1 shows it 3 px right
    logits = _logits_for(moved.reshape(2, 16, 16)).reshape(1, 2, 4, 16, 16)
    assert float(mr.warped_segmentation_loss(logits, flows)) > 0.1
    flows[:, :, 0] = 3.0                                      # the motion explains it
    assert float(mr.warped_segmentation_loss(logits, flows)) == pytest.approx(0.0, abs=1e-5)


def test_label_motion_loss_rewards_a_flow_that_carries_the_labels_onto_the_reference():
    codes = torch.full((1, 3, 24, 24), mr.BG_OR_RV, dtype=torch.long)
    codes[:, :, 6:16, 6:16] = MRLabel.LV_MYOCARDIUM
    codes[:, :, 8:14, 8:14] = MRLabel.LV_CAVITY
    codes[:, 1] = mr.IGNORE                                   # an unlabelled phase in between
    codes[:, 2] = torch.roll(codes[:, 2], shifts=3, dims=-1)  # the labelled one shows the LV 3 px right
    flows = torch.zeros(1, 2, 2, 24, 24)
    off = float(mr.label_motion_loss(codes, flows))
    assert off > 0.2
    flows[:, 1, 0] = 3.0                                      # frame 0 -> 2: the flow says 3 px right
    assert float(mr.label_motion_loss(codes, flows)) == pytest.approx(0.0, abs=0.02)
    flows[:, 0, 0] = 7.0                                      # the unlabelled frame's flow is not judged
    assert float(mr.label_motion_loss(codes, flows)) == pytest.approx(0.0, abs=0.02)
    # an end-systolic real image (no epicardium: NOT_CAVITY outside the cavity) judges the cavity only
    es = codes.clone()
    es[:, 2] = torch.where(es[:, 2] == MRLabel.LV_CAVITY, es[:, 2], torch.full_like(es[:, 2], mr.NOT_CAVITY))
    flows[:, 1, 0] = 0.0
    cavity_only = float(mr.label_motion_loss(es, flows))
    assert 0.2 < cavity_only
    assert float(mr.label_motion_loss(torch.full_like(codes, mr.IGNORE), flows)) == 0.0


def test_warped_truth_loss_judges_later_frames_through_the_motion_against_the_reference_labels():
    lab = torch.zeros(1, 2, 16, 16, dtype=torch.long)
    lab[:, :, 4:10, 4:10] = MRLabel.LV_CAVITY
    codes = lab.clone()
    codes[:, 1] = mr.IGNORE                                   # only the reference is labelled
    moved = lab.clone()
    moved[:, 1] = torch.roll(lab[:, 1], shifts=3, dims=-1)   # frame 1 shows the cavity 3 px right
    logits = _logits_for(moved.reshape(2, 16, 16)).reshape(1, 2, 4, 16, 16)
    flows = torch.zeros(1, 1, 2, 16, 16)
    assert float(mr.warped_truth_loss(logits, flows, codes)) > 0.5
    flows[:, :, 0] = 3.0                                      # the motion carries it back
    assert float(mr.warped_truth_loss(logits, flows, codes)) == pytest.approx(0.0, abs=1e-4)
    # a partial label (anything but cavity) accepts myocardium, background or RV there
    partial = codes.clone()
    partial[:, 0] = torch.where(lab[:, 0] == MRLabel.LV_CAVITY, lab[:, 0], torch.full_like(lab[:, 0], mr.NOT_CAVITY))
    assert float(mr.warped_truth_loss(logits, flows, partial)) == pytest.approx(0.0, abs=1e-4)
    assert float(mr.warped_truth_loss(logits, flows, torch.full_like(codes, mr.IGNORE))) == 0.0


def test_real_sequences_can_start_at_a_contoured_phase():
    ph = mr.Phantoms(np.zeros((1, 4, 32, 32), np.float32), np.zeros((1, 4, 32, 32), np.uint8), np.array([[16.0, 16.0]]))
    images = np.random.default_rng(0).random((1, 6, 32, 32)).astype(np.float32)
    target = np.full((32, 32), mr.BG_OR_RV, np.uint8)
    target[12:20, 12:20] = MRLabel.LV_CAVITY
    patient = mr.Patient("P", images, np.array([1.0, 1.0]), np.array([0]), np.array([4]), target[None],
                         None, None, np.array([True]), [], np.array([[16.0, 16.0]]))
    sampler = mr.Sampler([patient], ph, 32, 1.0, torch.Generator().manual_seed(0), augment="basic")
    starts = set()
    for _ in range(12):
        x, codes = sampler.sequences(1, 3, labelled_start=1.0)
        assert x.shape == (1, 3, 32, 32) and codes.shape == (1, 3, 32, 32)
        labelled = [(codes[0, k] != mr.IGNORE).any().item() for k in range(3)]
        starts.add(tuple(labelled))
    assert starts == {(True, False, False)}                   # phase 4, the contoured one, first
    _, codes = sampler.sequences(1, 3, labelled_start=0.0)
    assert codes.shape == (1, 3, 32, 32)


# ------------------------------------------------------------------ evaluation helpers
def _circle(cx, cy, r, n=64):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)


def test_contour_distance_and_warping_points_back():
    sp = np.array([1.5, 1.5])
    a, b = _circle(30, 30, 10), _circle(30, 30, 12)
    assert mr.mean_contour_distance_mm(a, a, sp) == pytest.approx(0.0, abs=1e-9)
    assert mr.mean_contour_distance_mm(a, b, sp) == pytest.approx(3.0, abs=0.05)
    phi = np.zeros((64, 64, 2))
    phi[..., 0], phi[..., 1] = 2.0, -1.0                    # frame 0 -> later: +2 cols, -1 row
    back = mr.warp_points_back(a + [2.0, -1.0], phi)
    assert np.allclose(back, a, atol=1e-9)


def test_dice():
    a = np.zeros((8, 8), bool)
    a[2:6, 2:6] = True
    assert mr.dice(a, a) == 1.0 and mr.dice(a, ~a) == 0.0 and mr.dice(a & False, a & False) == 1.0


# ------------------------------------------------------------------ a tiny run
def _synthetic_patient(seed: int, slices=2, phases=6, size=64) -> dict:
    """A cine of a beating ring (the read_patient arrays), contoured at phases 0 (ED, both
    contours) and 3 (ES, endocardium only)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((slices, phases, size, size), np.int16)
    rows = []
    for s in range(slices):
        for p in range(phases):
            r_endo = 10 - 3 * np.sin(np.pi * p / phases)
            d = np.hypot(yy - 32, xx - 32)
            img = np.where(d < r_endo, 300, np.where(d < r_endo + 6, 80, 120)) + rng.normal(0, 5, d.shape)
            images[s, p] = img.astype(np.int16)
            if p in (0, 3):
                rows.append((s, p, _circle(32, 32, r_endo),
                             _circle(32, 32, r_endo + 6) if p == 0 else None))
    from streamer.io.sunnybrook import rasterise_contour

    cav = np.stack([rasterise_contour(r[2], (size, size)) for r in rows])
    myo = np.stack([(rasterise_contour(r[3], (size, size)) & (1 - c)) if r[3] is not None
                    else np.zeros((size, size), np.uint8) for r, c in zip(rows, cav)])
    endo = [r[2] for r in rows]
    epi = [r[3] if r[3] is not None else np.zeros((0, 2)) for r in rows]
    off = lambda items: np.cumsum([0] + [len(i) for i in items])  # noqa: E731
    return {"images": images, "instance_number": np.arange(slices * phases).reshape(slices, phases) + 1,
            "spacing_mm": np.array([1.4, 1.4]), "slice_position_mm": np.arange(slices) * 10.0,
            "label_slice": np.array([r[0] for r in rows]), "label_phase": np.array([r[1] for r in rows]),
            "label_instance": np.arange(len(rows)), "cavity": cav, "myocardium": myo,
            "has_epicardium": np.array([r[3] is not None for r in rows]),
            "endo_points": np.concatenate(endo), "endo_offsets": off(endo),
            "epi_points": np.concatenate(epi), "epi_offsets": off(epi)}


def _synthetic_phantoms(split: str, n: int, motion: bool = False):
    p = mr.Patient.from_arrays("phantom", _synthetic_patient(7 if split == "test" else 3))
    labels = np.zeros(p.images.shape, np.uint8)
    yy, xx = np.mgrid[:64, :64]
    d = np.hypot(yy - 32, xx - 32)
    for t in range(p.images.shape[1]):
        r = 10 - 3 * np.sin(np.pi * t / p.images.shape[1])
        labels[:, t][:, (d >= r) & (d < r + 6)] = MRLabel.LV_MYOCARDIUM
        labels[:, t][:, d < r] = MRLabel.LV_CAVITY
    disp = np.zeros(p.images.shape + (2,), np.float32) if motion else None
    ph = mr.Phantoms(p.images[:n], labels[:n], np.tile([32.0, 32.0], (n, 1)), None if disp is None else disp[:n])
    return ph, {"builder": "synthetic", "split": split, "samples": n}


def _run(tmp_path, name, monkeypatch, holdout="B", extra=()):
    monkeypatch.setattr(mr, "load_phantoms", _synthetic_phantoms)
    patients = {"A": _synthetic_patient(1), "B": _synthetic_patient(2)}
    parser = mr.argparse.ArgumentParser()
    mr.add_parser(parser.add_subparsers(dest="role"))
    out = tmp_path / name / "mr.pt"
    args = parser.parse_args(["mr", "--patients", "A,B", "--holdout-patient", holdout, "--samples", "2",
                              "--test-samples", "1", "--motion-steps", "2", "--seg-steps", "2",
                              "--joint-steps", "2", "--batch-size", "2", "--sequence-length", "3",
                              "--seg-batch-size", "2", "--crop", "32", "--out", str(out), *extra])
    args.read_patient = lambda root, pid: patients[pid]
    args.command_line = "test"
    assert args.func(args) == 0
    return out, json.loads((out.parent / "mr.json").read_text())


def test_a_tiny_seeded_run_writes_weights_and_record_reproducibly(tmp_path, monkeypatch):
    monkeypatch.setenv("CARDIOSTREAM_NO_PROGRESS", "1")
    out1, rec1 = _run(tmp_path, "a", monkeypatch)
    out2, rec2 = _run(tmp_path, "b", monkeypatch)
    assert out1.is_file() and rec1["weights_sha256"] == rec2["weights_sha256"]
    assert rec1["role"] == "mr" and rec1["command"] == "test"
    assert rec1["data"]["train_patients"] == ["A"] and rec1["data"]["holdout_patient"] == "B"
    h = rec1["test"]["holdout"]
    assert h["patient"] == "B" and h["ed_images"] == 2 and h["es_images"] == 2
    assert 0.0 <= h["cavity_dice_mean"] <= 1.0 and h["mcd_endo_mm_mean"] > 0
    assert h["motion_slices"] == [0, 1]
    assert {"lv_cavity_dice_mean", "lv_myocardium_dice_mean", "epe_myocardium_px"} <= set(rec1["test"]["phantoms"])
    assert [e["stage"] for e in rec1["history"]][::2] == ["motion", "segmentation", "joint"]
    model = mr_joint.build()
    model.load_state_dict(torch.load(out1, weights_only=True))


def test_the_label_terms_join_the_steps_they_are_asked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("CARDIOSTREAM_NO_PROGRESS", "1")
    on = ["--label-motion", "0.01", "--labelled-start", "1", "--warp-truth", "0.2"]
    _, rec = _run(tmp_path, "all", monkeypatch, extra=on)
    terms = {e["stage"]: set(e) for e in rec["history"]}
    assert "label_motion" in terms["motion"] and "label_motion" in terms["joint"]
    assert "warp_truth" in terms["segmentation"] and "warp_truth" in terms["joint"]
    assert "warp_truth" not in terms["motion"]
    _, rec = _run(tmp_path, "step1", monkeypatch, extra=[*on, "--label-motion-in", "motion"])
    terms = {e["stage"]: set(e) for e in rec["history"]}
    assert "label_motion" in terms["motion"] and "label_motion" not in terms["joint"]
    _, rec = _run(tmp_path, "off", monkeypatch)
    assert not any({"label_motion", "warp_truth"} & set(e) for e in rec["history"])


def test_step_4_refines_the_motion_branch_alone_from_given_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CARDIOSTREAM_NO_PROGRESS", "1")
    base, _ = _run(tmp_path, "base", monkeypatch)
    refine = ["--init", str(base), "--motion-steps", "0", "--seg-steps", "0", "--joint-steps", "0",
              "--refine-motion-steps", "3", "--refine-label-motion", "0.5", "--refine-warp-truth", "0.5",
              "--refine-labelled-start", "1", "--refine-lr", "0.01"]
    out, rec = _run(tmp_path, "refined", monkeypatch, extra=refine)
    assert [e["stage"] for e in rec["history"]] == ["refine_motion"] * 3
    assert {"label_motion", "warp_truth", "mse"} <= set(rec["history"][-1])
    assert rec["init"]["path"] == str(base) and len(rec["init"]["sha256"]) == 64
    # the initial weights' own record travels with the new one's
    assert rec["init"]["record"]["weights_sha256"] == rec["init"]["sha256"]
    assert rec["init"]["record"]["schedule"]["joint_steps"] == 2
    assert rec["schedule"]["refine_motion_steps"] == 3
    before = torch.load(base, weights_only=True)
    after = torch.load(out, weights_only=True)
    for k in before:
        same = torch.equal(before[k], after[k])
        # the encoder and the segmentation branch are frozen: the labels stay step 3's
        assert same != k.startswith("motion_branch."), k
    # the same labels on the held-out patient, bit for bit
    base_rec = json.loads((base.parent / "mr.json").read_text())
    assert rec["test"]["holdout"]["cavity_dice_mean"] == base_rec["test"]["holdout"]["cavity_dice_mean"]


def test_init_must_be_weights_of_the_same_network(tmp_path, monkeypatch):
    monkeypatch.setenv("CARDIOSTREAM_NO_PROGRESS", "1")
    bad = tmp_path / "bad.pt"
    torch.save({"encoder.nope": torch.zeros(1)}, bad)
    with pytest.raises(SystemExit, match="not a state dict of this network"):
        _run(tmp_path, "x", monkeypatch, extra=["--init", str(bad)])
    with pytest.raises(SystemExit, match="not a state dict of this network"):
        _run(tmp_path, "y", monkeypatch, extra=["--init", str(tmp_path / "missing.pt")])
    # weights that saw the held-out patient cannot start its fold
    saw_b, _ = _run(tmp_path, "saw_b", monkeypatch, holdout="A")
    with pytest.raises(SystemExit, match="trained on B, the patient --holdout-patient leaves out"):
        _run(tmp_path, "z", monkeypatch, holdout="B", extra=["--init", str(saw_b)])


def test_real_patients_need_a_reader_and_a_known_holdout(tmp_path, monkeypatch):
    parser = mr.argparse.ArgumentParser()
    mr.add_parser(parser.add_subparsers(dest="role"))
    args = parser.parse_args(["mr", "--patients", "A", "--out", str(tmp_path / "mr.pt")])
    with pytest.raises(SystemExit, match="Sunnybrook reader"):
        mr.load_patients(args)
    args = parser.parse_args(["mr", "--patients", "A", "--holdout-patient", "C"])
    with pytest.raises(SystemExit, match="not one of"):
        mr.load_patients(args)


def test_motion_to_last_is_the_last_flow_against_the_first_frame(monkeypatch):
    """Every frame is paired with frame 0, so the motion from frame 0 to the last frame is
    the sequence's last flow, not a sum of steps."""
    model = mr_joint.build()
    flows = torch.zeros(1, 2, 2, 32, 32)
    flows[:, 0, 0] = 1.0
    flows[:, 1, 1] = 2.0
    seen = {}

    def sequence(x, segment=False):
        seen["frames"] = tuple(x.shape)
        return None, flows
    monkeypatch.setattr(model, "sequence", sequence)
    phi = mr.motion_to_last(model, np.zeros((3, 32, 32), np.float32))
    assert seen["frames"] == (1, 3, 32, 32) and phi.shape == (32, 32, 2)
    assert np.allclose(phi[..., 0], 0.0) and np.allclose(phi[..., 1], 2.0)


def test_displacement_from_first_follows_the_points_along_the_steps():
    """Frame-to-frame truth composed on frame 0's grid: constant steps add up; a step that
    differs across the image is sampled where the point has got to."""
    steps = np.zeros((2, 32, 32, 2), np.float32)
    steps[0, ..., 0] = 1.0                                     # frame 0 -> 1: +1 col everywhere
    steps[1, :, 16:, 1] = 2.0                                  # frame 1 -> 2: +2 rows, right half
    d = mr.displacement_from_first(steps)
    assert d.shape == (2, 32, 32, 2)
    assert np.allclose(d[0, ..., 0], 1.0) and np.allclose(d[0, ..., 1], 0.0)
    assert np.allclose(d[1, :, 20, 0], 1.0) and np.allclose(d[1, :, 20, 1], 2.0)
    assert np.allclose(d[1, :, 5, 1], 0.0)
    assert np.allclose(d[1, :, 15, 1], 2.0)                    # col 15 has moved to col 16


def test_motion_loss_pairs_every_frame_with_the_first():
    img = _blob_image()
    frames = torch.stack([img, torch.roll(img, shifts=(0, 2), dims=(0, 1)),
                          torch.roll(img, shifts=(0, 5), dims=(0, 1))])[None]
    against_first = torch.zeros(1, 2, 2, 48, 48)
    against_first[:, 0, 0], against_first[:, 1, 0] = 2.0, 5.0  # frame 0 -> 1, frame 0 -> 2
    loss, _ = mr.motion_loss(frames, against_first, 0.0, 0.0)
    assert abs(float(loss)) < 1e-7
    steps = against_first.clone()
    steps[:, 1, 0] = 3.0                                       # frame 1 -> 2: the wrong pairing
    wrong, _ = mr.motion_loss(frames, steps, 0.0, 0.0)
    assert float(wrong) > 1e-4


# ------------------------------------------------------------------ strong augmentation
def test_strong_augmentation_keeps_range_labels_and_one_geometry_per_sequence():
    g = torch.Generator().manual_seed(0)
    img = _blob_image(64, 64, margin=12)
    frames = img.expand(3, 4, 64, 64).clone()                  # 3 sequences of 4 equal frames
    codes = torch.zeros(3, 4, 64, 64, dtype=torch.uint8)
    codes[:, :, 24:40, 24:40] = MRLabel.LV_CAVITY
    x, t = mr.augment_strong(frames, codes, g)
    assert x.shape == frames.shape and t.shape == codes.shape and t.dtype == torch.uint8
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert set(torch.unique(t).tolist()) <= {0, int(MRLabel.LV_CAVITY), mr.IGNORE}
    assert bool((t == MRLabel.LV_CAVITY).any())
    for k in range(1, 4):                                      # same geometry for every frame
        assert torch.equal(t[:, k], t[:, 0])
        assert float((x[:, k] - x[:, 0]).abs().mean()) < 0.05  # frames differ by noise only
    y, _ = mr.augment_strong(frames, None, torch.Generator().manual_seed(0))
    assert torch.allclose(y, x)                                # seeded: the same draw


def test_the_sampler_refuses_an_unknown_augmentation():
    with pytest.raises(ValueError, match="augment"):
        mr.Sampler([], None, 32, 0.5, torch.Generator(), augment="wild")


def test_sequences_and_labelled_frames_take_their_own_augmentation(monkeypatch):
    """--sequence-augment basic: the motion loss's sequences get the basic recipe (one affine,
    gain / gamma / noise) while the labelled frames keep the strong one."""
    rng = np.random.default_rng(0)
    frames = rng.random((4, 5, 64, 64)).astype(np.float32)
    labels = np.zeros((4, 5, 64, 64), np.uint8)
    labels[:, :, 24:40, 24:40] = MRLabel.LV_CAVITY
    ph = mr.Phantoms(frames, labels, np.tile([32.0, 32.0], (4, 1)))
    seen = []
    original = mr.augment_strong

    def spy(x, t, g):
        seen.append("labelled" if x.shape[1] == 1 else "sequence")
        return original(x, t, g)

    monkeypatch.setattr(mr, "augment_strong", spy)
    sampler = mr.Sampler([], ph, 32, 0.0, torch.Generator().manual_seed(0), augment="strong")
    x, codes = sampler.sequences(2, 3)
    assert x.shape == (2, 3, 32, 32) and codes.shape == (2, 3, 32, 32)
    x, codes = sampler.labelled(2)
    assert x.shape == (2, 1, 32, 32) and codes.shape == (2, 32, 32)
    assert seen == ["labelled"]                     # by default the strong recipe on labelled frames only
    both = mr.Sampler([], ph, 32, 0.0, torch.Generator().manual_seed(0), augment="strong",
                      sequence_augment="strong")
    both.sequences(2, 3)
    assert seen == ["labelled", "sequence"]
    with pytest.raises(ValueError, match="augment 'wild'"):
        mr.Sampler([], ph, 32, 0.5, torch.Generator(), sequence_augment="wild")
