"""Do the scores mean something? Calibration, thresholds, open-set identification and enrolment checks on the
shared TTS corpus, each beside the plain cosine-threshold baseline measured in the same run.

A model trained on ``train`` (64 speakers) embeds the ``dev`` utterances (20 unseen speakers × 12). The dev speakers
are split into two halves A and B (10 speakers each, all within-half pairs as trials); everything is "fit on one
half, measure on the other", both ways, and the two directions are reported with their mean:

* **calibration**: Cllr of the raw cosine read as an LLR, of ``(cos+1)/2`` read as a probability, and of the LLRs
  of a calibration fitted on the other half (with and without duration quality measures), next to min Cllr;
  actual DCF vs minDCF at P_target 0.01 and 0.05, the baseline being the cosine EER threshold of the other half
  (what ``eval.py`` stores in ``result.json``) and a copied threshold of 0.5;
* **thresholds on unseen speakers**: the FAR actually reached when the threshold is chosen for 1 % FAR on the
  other half, beside the FAR of the other half's EER threshold and of the copied 0.5;
* **open-set identification** within a half, a third of its speakers unknown (3 of 10; 30 random choices): the
  answers with thresholds from the other half (cosine EER threshold = baseline; 1 %-FAR threshold; calibrated
  LLR >= 0; with and without a margin; AS-norm with a cohort of training speakers), and DIR at FAR (oracle curve);
* **enrolment** from 3 recordings per speaker (the other 9 are tests): EER of the normalised-mean rule vs the plain
  mean; for each quality check, one enrolment recording corrupted the way the check is meant to catch, the check's
  detection rate, its false alarms on clean enrolments, and the EER when the corrupted enrolment is accepted, when
  the check drops the flagged recording, and when the check refuses and the speaker records again (a clean take).
  The agreement limit is the 5 %-FRR score of the dev pairs (95 % of same-speaker pairs score above it).

    python benchmarks/bench_calibration.py --model_path /tmp/calib_models/EcapaTdnn_Fbank/last_model

``--gallery`` measures decisions over a gallery instead (issue 21): ``mvector calibrate --rule far --target 0.01``
on ``--calibration_list`` (every pair of its recordings) or ``--calibration_trials``, then, on the voices of
``--corpus`` (its ``--split``, which the calibration never saw), galleries of each of ``--gallery_sizes`` speakers
enrolled from ``--enrol`` recordings (the rest of the voices are strangers; every other recording is a probe),
``--repeats`` random galleries each: the share of strangers named (FPIR, 95 % bootstrap over stranger speakers)
and of enrolled probes found (DIR, Wilson) for the FPIR rule, the posterior rule, both (the default), the old
single-pair threshold, and an oracle threshold with and without gallery AS-norm; plus the single-pair FAR the
stored threshold reaches on every different-speaker pair of the corpus. Embeddings are cached in ``--cache``.

    python benchmarks/bench_calibration.py --gallery --model_path models/campplus_zh_en --corpus CORPUS \
        --calibration_list CAL/train_list.txt --cache /tmp/gallery_cache

Prints one JSON object. If the corpus is missing it says so and exits 0.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from common import ROOT, add_repo_to_path, emit, machine_info

add_repo_to_path()

from mvector.audio import read_audio, resample, to_mono  # noqa: E402
from mvector.evaluation.calibration import (  # noqa: E402
    QUALITY_FEATURES,
    actual_dcf,
    cllr,
    dcf_at_threshold,
    duration_features,
    logit,
    min_cllr,
)
from mvector.evaluation.calibration_fit import choose_operating_point, fit_calibration  # noqa: E402
from mvector.evaluation.metrics import compute_eer, compute_min_dcf  # noqa: E402
from mvector.evaluation.openset import dir_at_far, open_set_metrics  # noqa: E402
from mvector.inference.enrolment import QualityConfig, check_enrolment, combine_embeddings  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "tts"
P_TARGETS = (0.01, 0.05)


def read_list(path: Path) -> list[tuple[str, int]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            p, label = line.split("\t")
            rows.append((str(path.parent / p), int(label)))
    return rows


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def pairs(idx: np.ndarray, spk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = np.triu_indices(len(idx), k=1)
    return idx[a], idx[b], (spk[idx[a]] == spk[idx[b]]).astype(int)


def as_norm_matrix(scores: np.ndarray, left: np.ndarray, right: np.ndarray, cohort: np.ndarray, k: int) -> np.ndarray:
    def stats(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = unit(e) @ cohort.T
        top = np.sort(s, axis=1)[:, -k:]
        return top.mean(axis=1), np.maximum(top.std(axis=1), 1e-6)

    ml, sl = stats(left)
    mr, sr = stats(right)
    return 0.5 * ((scores - ml[:, None]) / sl[:, None] + (scores - mr[None]) / sr[None])


# ------------------------------------------------------------------------------------------------ calibration
def verification(emb, dur, spk, half_a, half_b) -> dict:
    """Fit on one half, measure on the other."""
    out = {}
    for name, fit_idx, test_idx in (("A->B", half_a, half_b), ("B->A", half_b, half_a)):
        fa, fb, fy = pairs(fit_idx, spk)
        ta, tb, ty = pairs(test_idx, spk)
        u = unit(emb)
        fs, ts = np.einsum("ij,ij->i", u[fa], u[fb]), np.einsum("ij,ij->i", u[ta], u[tb])
        fq, tq = duration_features(dur[fa], dur[fb]), duration_features(dur[ta], dur[tb])
        cal = fit_calibration(fs, fy, data="other half")
        qmf = fit_calibration(fs, fy, quality=fq, quality_features=QUALITY_FEATURES)
        eer_thr = compute_eer(fs, fy)[1]
        llr = cal.llr(ts)
        r = {
            "fit_trials": [int(fy.sum()), int((1 - fy).sum())],
            "test_trials": [int(ty.sum()), int((1 - ty).sum())],
            "eer": compute_eer(ts, ty)[0],
            "cllr_raw_cosine_as_llr": cllr(ts, ty),
            "cllr_raw_(cos+1)/2_as_probability": cllr(logit(np.clip((ts + 1) / 2, 1e-6, 1 - 1e-6)), ty),
            "cllr_calibrated": cllr(llr, ty),
            "cllr_calibrated_durations": cllr(qmf.llr(ts, tq), ty),
            "min_cllr": min_cllr(ts, ty),
        }
        for p in P_TARGETS:
            r[f"min_dcf@{p}"] = compute_min_dcf(ts, ty, p_target=p)[0]
            r[f"act_dcf_calibrated@{p}"] = actual_dcf(llr, ty, p)
            r[f"act_dcf_cosine_eer_threshold@{p}"] = dcf_at_threshold(ts, ty, eer_thr, p)
            r[f"act_dcf_cosine_0.5@{p}"] = dcf_at_threshold(ts, ty, 0.5, p)
        op = choose_operating_point(fs, fy, "far", 0.01, data="other half")
        r["threshold_far1%_from_other_half"] = op["threshold"]
        r["far_reached_far1%_threshold"] = float((ts[ty == 0] >= op["threshold"]).mean())
        r["frr_reached_far1%_threshold"] = float((ts[ty == 1] < op["threshold"]).mean())
        r["far_reached_cosine_eer_threshold"] = float((ts[ty == 0] >= eer_thr).mean())
        r["frr_reached_cosine_eer_threshold"] = float((ts[ty == 1] < eer_thr).mean())
        r["far_reached_cosine_0.5"] = float((ts[ty == 0] >= 0.5).mean())
        r["frr_reached_cosine_0.5"] = float((ts[ty == 1] < 0.5).mean())
        r["calibration"] = {"a": cal.weights["score"], "b": cal.bias, "cosine_eer_threshold": eer_thr}
        out[name] = r
    keys = [k for k in out["A->B"] if isinstance(out["A->B"][k], float)]
    out["mean"] = {k: (out["A->B"][k] + out["B->A"][k]) / 2 for k in keys}
    return out


# ------------------------------------------------------------------------------------------------ open set
def open_set(emb, spk, half_a, half_b, cohort, repeats: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    u = unit(emb)
    results: dict[str, list] = {}
    curve: dict[str, list] = {}
    for fit_idx, test_idx in ((half_a, half_b), (half_b, half_a)):
        fa, fb, fy = pairs(fit_idx, spk)
        fs = np.einsum("ij,ij->i", u[fa], u[fb])
        cal = fit_calibration(fs, fy)
        eer_thr = compute_eer(fs, fy)[1]
        far_thr = choose_operating_point(fs, fy, "far", 0.01)["threshold"]
        llr0_thr = cal.score_for_llr(0.0)
        # AS-norm thresholds from the other half's AS-normed pairs
        fit_norm = as_norm_matrix(u[fit_idx] @ u[fit_idx].T, u[fit_idx], u[fit_idx], cohort, 100)
        ia, ib = np.triu_indices(len(fit_idx), k=1)
        fsn = fit_norm[ia, ib]
        asn_eer_thr = compute_eer(fsn, fy)[1]
        asn_far_thr = choose_operating_point(fsn, fy, "far", 0.01)["threshold"]
        speakers = np.unique(spk[test_idx])
        for _ in range(repeats):
            unknown = rng.choice(speakers, size=len(speakers) // 3, replace=False)
            enrolled = np.setdiff1d(speakers, unknown)
            models, probes, truth = [], [], []
            for col, s in enumerate(enrolled):
                utts = rng.permutation(test_idx[spk[test_idx] == s])
                models.append(combine_embeddings(emb[utts[:3]]))
                probes += list(utts[3:])
                truth += [col] * len(utts[3:])
            for s in unknown:
                probes += list(test_idx[spk[test_idx] == s])
                truth += [-1] * int((spk[test_idx] == s).sum())
            models_arr, probes_arr, truth_arr = np.stack(models), np.asarray(probes), np.asarray(truth)
            scores = u[probes_arr] @ models_arr.T
            normed = as_norm_matrix(scores, emb[probes_arr], models_arr, cohort, 100)
            settings = {
                "closed_set (always the best; no threshold)": (scores, -np.inf, 0.0),
                "cosine, EER threshold of other half (baseline)": (scores, eer_thr, 0.0),
                "cosine, 1%-FAR threshold of other half": (scores, far_thr, 0.0),
                "calibrated LLR >= 0 (fit on other half)": (scores, llr0_thr, 0.0),
                "calibrated LLR >= 0, margin 0.05": (scores, llr0_thr, 0.05),
                "AS-norm, EER threshold of other half": (normed, asn_eer_thr, 0.0),
                "AS-norm, 1%-FAR threshold of other half": (normed, asn_far_thr, 0.0),
            }
            for name, (s, thr, margin) in settings.items():
                results.setdefault(name, []).append(open_set_metrics(s, truth_arr, thr, margin))
            for name, s in (("cosine", scores), ("AS-norm", normed)):
                curve.setdefault(name, []).append(dir_at_far(s, truth_arr, fars=(0.01, 0.05, 0.1)))
    out = {"repeats_per_direction": repeats, "enrolled_per_run": 7, "unknown_per_run": 3, "decisions": {}}
    for name, runs in results.items():
        out["decisions"][name] = {
            k: float(np.mean([r[k] for r in runs])) for k in ("dir", "far", "misidentified", "false_reject", "accuracy")
        }
    out["dir_at_far_oracle"] = {
        name: {k: float(np.mean([r[k] for r in runs])) for k in runs[0] if k.startswith(("dir@", "rank1"))}
        for name, runs in curve.items()
    }
    return out


# ------------------------------------------------------------------------------------------------ enrolment
def corrupt(kind: str, wave: np.ndarray, sr: int, other: np.ndarray, rng: np.random.Generator) -> tuple:
    if kind == "speech":
        start = int(np.argmax(np.abs(wave) > 0.1 * np.abs(wave).max()))
        return wave[start : start + int(0.4 * sr)], sr
    if kind == "clipping":
        return np.clip(wave * 8.0 / max(np.abs(wave).max(), 1e-6), -0.5, 0.5).astype("float32"), sr
    if kind == "level":  # a very quiet take: 60 dB down, over a microphone self-noise floor at -80 dBFS
        return (wave * 0.001 + rng.normal(0, 1e-4, wave.size)).astype("float32"), sr
    if kind == "snr":  # babble-free white noise at 0 dB SNR
        return (wave + rng.normal(0, float(np.sqrt(np.mean(wave**2))), wave.size)).astype("float32"), sr
    if kind == "bandwidth":  # telephone band: 8 kHz, upsampled back to 16 kHz
        return resample(resample(wave, sr, 8000), 8000, sr), sr
    if kind == "agreement":  # a mix-up: another speaker's recording under this name
        return other, sr
    raise ValueError(kind)


def enrolment(predictor, emb, spk, raw, threshold: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    speakers = np.unique(spk)
    plan = {}
    for s in speakers:
        utts = rng.permutation(np.flatnonzero(spk == s))
        plan[int(s)] = (utts[:3], utts[3:])
    test_idx = np.concatenate([plan[int(s)][1] for s in speakers])
    u = unit(emb)

    def eer_of(models: dict[int, np.ndarray]) -> float:
        keys = sorted(models)
        m = np.stack([models[k] for k in keys])
        scores = u[test_idx] @ unit(m).T
        labels = spk[test_idx][:, None] == np.asarray(keys)[None]
        return compute_eer(scores.reshape(-1), labels.reshape(-1).astype(int))[0]

    out = {
        "enrolment_recordings": 3,
        "test_recordings": int(len(test_idx)),
        "rule_normalised_mean_eer": eer_of({s: combine_embeddings(emb[plan[s][0]]) for s in plan}),
        "rule_plain_mean_eer": eer_of({s: combine_embeddings(emb[plan[s][0]], rule="mean") for s in plan}),
        "rule_single_recording_eer": eer_of({s: unit(emb[plan[s][0][0]]) for s in plan}),
    }
    config = QualityConfig(min_agreement=threshold)
    out["agreement_limit"] = threshold
    sr = predictor.sample_rate
    clean_flags: dict[str, int] = {}
    for s in plan:
        recs = [raw[i] for i in plan[s][0]]
        report = check_enrolment(recs, sr, embeddings=emb[plan[s][0]], config=config)
        for issue in report.issues:
            clean_flags[issue.check] = clean_flags.get(issue.check, 0) + 1
    out["clean_enrolments_flagged"] = {"enrolments": len(plan), **clean_flags}
    checks = {}
    for kind in ("speech", "clipping", "level", "snr", "bandwidth", "agreement"):
        models_bad, models_fixed, models_rerecorded, caught, other_checks = {}, {}, {}, 0, {}
        for s in plan:
            enrol_idx = plan[s][0]
            other_spk = int(rng.choice(speakers[speakers != s]))
            other = raw[int(plan[other_spk][0][0])][0]
            bad_wave, bad_sr = corrupt(kind, raw[int(enrol_idx[0])][0], sr, other, rng)
            bad_emb = predictor.embed_batch([(bad_wave, bad_sr)])[0]
            embs = np.stack([bad_emb, emb[enrol_idx[1]], emb[enrol_idx[2]]])
            recs = [(bad_wave, bad_sr)] + [raw[int(i)] for i in enrol_idx[1:]]
            report = check_enrolment(recs, sr, embeddings=embs, config=config)
            flagged = {i.recording for i in report.issues if i.check == kind}
            caught += int(0 in flagged)
            for issue in report.issues:
                if issue.check != kind:
                    other_checks[issue.check] = other_checks.get(issue.check, 0) + 1
            models_bad[s] = combine_embeddings(embs)
            keep = [k for k in range(3) if k not in {i.recording for i in report.issues if i.check == kind}]
            models_fixed[s] = combine_embeddings(embs[keep] if keep else embs)
            # refused and recorded again: the speaker gives a clean take (the one the corruption replaced)
            models_rerecorded[s] = combine_embeddings(emb[enrol_idx]) if 0 in flagged else models_bad[s]
        checks[kind] = {
            "detected": caught / len(plan),
            "other_checks_fired": other_checks,
            "eer_corrupted_accepted": eer_of(models_bad),
            "eer_check_drops_flagged_recording": eer_of(models_fixed),
            "eer_check_refuses_and_speaker_records_again": eer_of(models_rerecorded),
        }
    out["checks"] = checks
    return out


# ------------------------------------------------------------------------------------------------ gallery (issue 21)
def embed_list(predictor, rows: list[tuple[str, int]], cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of a list's files (cached in ``cache`` as .npz, keyed by the model fingerprint and the files)."""
    import hashlib

    key = hashlib.sha256((predictor.fingerprint + "\n".join(p for p, _ in rows)).encode()).hexdigest()[:16]
    path = None if cache is None else cache / f"emb_{key}.npz"
    if path is not None and path.is_file():
        got = np.load(path)
        return got["emb"], got["spk"]
    emb = predictor.embed_batch([p for p, _ in rows], batch_size=16)
    spk = np.array([label for _, label in rows])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, emb=emb, spk=spk)
    return emb, spk


def gallery_split(spk: np.ndarray, n_enrol: int, per_model: int, rng: np.random.Generator):
    """Enrol ``n_enrol`` random speakers from ``per_model`` recordings; their other recordings and every recording
    of the rest are probes. Returns (models [N, D] rows as index lists, probe rows, truth per probe (-1 stranger),
    speaker of each probe)."""
    names = rng.permutation(np.unique(spk))
    enrolled, models, probes, truth = names[:n_enrol], [], [], []
    for col, name in enumerate(enrolled):
        rows = rng.permutation(np.flatnonzero(spk == name))
        models.append(rows[:per_model])
        probes += rows[per_model:].tolist()
        truth += [col] * (len(rows) - per_model)
    strangers = np.flatnonzero(~np.isin(spk, enrolled))
    probes += strangers.tolist()
    truth += [-1] * len(strangers)
    return models, np.array(probes), np.array(truth), enrolled


def gallery(args) -> dict:
    """Open-set identification over galleries of N in --gallery_sizes speakers of --corpus (voices the calibration
    never saw), decided by the posterior rule, the FPIR rule, and the single-pair threshold (the old rule)."""
    from mvector.cli.calibrate import main as calibrate_main
    from mvector.evaluation.calibration_store import read_calibration
    from mvector.evaluation.gallery import (
        NonTargetTail,
        expected_fpir,
        fpir_threshold,
        gallery_as_norm,
        gallery_posterior,
        posterior_llr_bar,
    )
    from mvector.evaluation.uncertainty import rate_interval, speaker_bootstrap
    from mvector.inference.enrolment import combine_embeddings
    from mvector.inference.predictor import MVectorPredictor

    corpus, cache = Path(args.corpus), Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    cal_path = cache / "calibration.json"
    t0 = time.time()
    if args.calibration_list:  # every pair of a list's recordings, as the trial list mvector calibrate reads
        cal_rows = read_list(Path(args.calibration_list))
        args.calibration_trials = str(cache / "calibration_pairs.txt")
        with open(args.calibration_trials, "w", encoding="utf-8") as fh:
            for (pa, la), (pb, lb) in itertools.combinations(cal_rows, 2):
                fh.write(f"{int(la == lb)} {pa} {pb}\n")
    argv = ["--model_path", args.model_path, "--trials", args.calibration_trials, "--rule", "far", "--target",
            str(args.pair_far), "--output", str(cal_path)]  # fmt: skip
    if not cal_path.is_file():
        import contextlib

        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the benchmark's one JSON object
            assert calibrate_main(argv) == 0
    cal = read_calibration(cal_path)
    tail = NonTargetTail.from_dict(cal.nontarget)
    pair_threshold = float(cal.operating_point["threshold"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = MVectorPredictor(model_path=args.model_path, use_gpu=False, threshold=pair_threshold)
    rows = read_list(corpus / f"{args.split}_list.txt")
    emb, spk = embed_list(predictor, rows, cache)
    t_embed = time.time() - t0
    u = unit(emb.astype(np.float64))
    # single-pair FAR of the stored 1 %-FAR threshold on held-out pairs (every different-speaker pair of the corpus)
    a, b, y = pairs(np.arange(len(spk)), spk)
    held = np.einsum("ij,ij->i", u[a], u[b])
    non = held[y == 0]
    pair_far = float((non >= pair_threshold).mean())
    names = np.unique(spk)
    far_ci = speaker_bootstrap(
        lambda w: float(np.average(non >= pair_threshold, weights=(w[np.searchsorted(names, spk[a])] *
                                                                     w[np.searchsorted(names, spk[b])])[y == 0]))
        if (w[np.searchsorted(names, spk[a])] * w[np.searchsorted(names, spk[b])])[y == 0].sum() > 0 else np.nan,
        list(names), rounds=200, seed=args.seed,
    )  # fmt: skip
    out: dict = {
        "calibration": {"trials": args.calibration_trials, "weights": cal.weights, "bias": cal.bias,
                        "pair_threshold_far": pair_threshold, "nontarget_trials": tail.n},
        "held_out_pairs": {"asked_far": args.pair_far, "measured_far": pair_far, "far_ci95": list(far_ci),
                           "nontarget_pairs": int(non.size), "speakers": int(names.size)},
        "galleries": {},
    }  # fmt: skip
    rng = np.random.default_rng(args.seed)
    for n_enrol in args.gallery_sizes:
        acc: dict[str, dict[str, list]] = {}
        for _ in range(args.repeats):
            models_idx, probes, truth, enrolled = gallery_split(spk, n_enrol, args.enrol, rng)
            models = np.stack([combine_embeddings(emb[i]) for i in models_idx]).astype(np.float64)
            scores = u[probes] @ models.T
            best_col = np.argmax(scores, axis=1)
            best = scores[np.arange(len(scores)), best_col]
            known = truth >= 0
            right = best_col == truth
            llr = np.asarray(cal.llr(scores))
            post_best = np.array([gallery_posterior(row, args.unknown_prior).best is not None for row in llr])
            normed = gallery_as_norm(scores, models @ models.T, top_k=args.asnorm_top_k)
            n_best_col = np.argmax(normed, axis=1)
            n_best = normed[np.arange(len(normed)), n_best_col]
            t_fpir = fpir_threshold(tail, args.fpir, n_enrol)
            t_eer = float(cal.metrics.get("eer_threshold", np.nan)) if "eer_threshold" in cal.metrics else None
            decisions = {
                f"fpir_rule@{args.fpir:g}": best >= t_fpir,
                f"posterior_rule@prior{args.unknown_prior:g}": post_best,
                f"posterior_fpir_rule@prior{args.unknown_prior:g},fpir{args.fpir:g} (default)": post_best
                & (best >= t_fpir),
                f"old_single_pair_threshold@far{args.pair_far:g}": best >= pair_threshold,
            }
            if t_eer is not None:
                decisions["old_eer_threshold"] = best >= t_eer
            # oracle comparisons at the same FPIR (threshold chosen on these strangers): cosine vs gallery AS-norm
            for label, sc, col in (("oracle_cosine", best, best_col), ("oracle_gallery_as_norm", n_best, n_best_col)):
                limit = np.quantile(sc[~known], 1 - args.fpir, method="higher")
                decisions[f"{label}@fpir{args.fpir:g}"] = (sc > limit, col)
            spk_probe = spk[probes]
            for key, got in decisions.items():
                accept, col = got if isinstance(got, tuple) else (got, best_col)
                hit = accept & known & (col == truth)
                rec = acc.setdefault(key, {"fp": [], "n_str": [], "hit": [], "n_known": [], "per_spk": {}})
                rec["fp"].append(int((accept & ~known).sum()))
                rec["n_str"].append(int((~known).sum()))
                rec["hit"].append(int(hit.sum()))
                rec["n_known"].append(int(known.sum()))
                # per stranger speaker: (false positives, probes), for a speaker-level interval
                for s in np.unique(spk_probe[~known]):
                    mine = ~known & (spk_probe == s)
                    tally = rec["per_spk"].setdefault(str(s), [0, 0])
                    tally[0] += int((accept & mine).sum())
                    tally[1] += int(mine.sum())
            acc.setdefault("_thresholds", {}).setdefault("fpir", []).append(t_fpir)
            acc["_thresholds"].setdefault("posterior_score", []).append(cal.score_for_llr(
                posterior_llr_bar(n_enrol, args.unknown_prior)))
            acc["_thresholds"].setdefault("expected_fpir_posterior", []).append(expected_fpir(
                tail, cal.score_for_llr(posterior_llr_bar(n_enrol, args.unknown_prior)), n_enrol))
            acc["_thresholds"].setdefault("expected_fpir_old", []).append(expected_fpir(tail, pair_threshold, n_enrol))
            acc["_thresholds"].setdefault("rank1", []).append(float(right[known].mean()))
        table = {}
        for key, rec in acc.items():
            if key == "_thresholds":
                continue
            fp, ns, hit, nk = map(np.sum, (rec["fp"], rec["n_str"], rec["hit"], rec["n_known"]))
            per = np.array(list(rec["per_spk"].values()), dtype=np.float64)  # stranger speakers, over repeats
            ci = speaker_bootstrap(lambda w, per=per: float((w * per[:, 0]).sum() / max((w * per[:, 1]).sum(), 1)),
                                   list(range(len(per))), rounds=300, seed=args.seed)  # fmt: skip
            table[key] = {
                "fpir": float(fp / ns), "fpir_ci95_speaker_bootstrap": [round(ci[0], 4), round(ci[1], 4)],
                "dir": float(hit / nk), "dir_ci95_wilson": [round(v, 4) for v in rate_interval(int(hit), int(nk))],
                "strangers_named": int(fp), "stranger_probes": int(ns), "enrolled_found": int(hit),
                "enrolled_probes": int(nk),
            }  # fmt: skip
        out["galleries"][f"N={n_enrol}"] = {
            "rules": table,
            "mean_thresholds": {k: float(np.mean(v)) for k, v in acc["_thresholds"].items()},
            "strangers": int(len(names) - n_enrol),
        }
    out["embedding_seconds"] = round(t_embed, 1)
    out["protocol"] = {"repeats": args.repeats, "enrol_per_speaker": args.enrol, "corpus": str(corpus),
                       "utterances": int(len(spk)), "speakers": int(len(names)), "unknown_prior": args.unknown_prior,
                       "asked_fpir": args.fpir, "asnorm_top_k": args.asnorm_top_k}  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_path", default="/tmp/calib_models/EcapaTdnn_Fbank/last_model")
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--repeats", type=int, default=30, help="open-set: random unknown sets per direction")
    parser.add_argument("--cohort_per_speaker", type=int, default=3, help="AS-norm cohort: train utterances each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gallery", action="store_true", help="measure open-set identification over galleries")
    parser.add_argument("--calibration_trials", default=None, help="--gallery: trials mvector calibrate fits on")
    parser.add_argument(
        "--calibration_list", default=None, help="--gallery: a path<TAB>label list; every pair is a calibration trial"
    )
    parser.add_argument("--split", default="dev", help="--gallery: the corpus split whose voices are the gallery")
    parser.add_argument("--gallery_sizes", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--enrol", type=int, default=3, help="--gallery: recordings per enrolled speaker")
    parser.add_argument("--fpir", type=float, default=0.05)
    parser.add_argument("--pair_far", type=float, default=0.01)
    parser.add_argument("--unknown_prior", type=float, default=0.5)
    parser.add_argument("--asnorm_top_k", type=int, default=10)
    parser.add_argument("--cache", default="/tmp/mvector_bench_gallery", help="--gallery: embeddings, calibration")
    args = parser.parse_args()
    if args.gallery:
        if args.repeats == 30:
            args.repeats = 20
        emit({"benchmark": "calibration --gallery", "model": str(args.model_path), **gallery(args),
              "machine": machine_info(), "argv": sys.argv[1:]})  # fmt: skip
        return 0
    corpus = Path(args.corpus)
    if not (corpus / "dev_list.txt").is_file():
        emit({"skipped": f"corpus not found at {corpus}"})
        return 0
    from mvector.inference.predictor import MVectorPredictor

    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = MVectorPredictor(model_path=args.model_path, use_gpu=False)
    dev = read_list(corpus / "dev_list.txt")
    raw = []
    for path, _ in dev:
        samples, rate = read_audio(path)
        raw.append((to_mono(samples), rate))
    waves = [predictor.load(x) for x in raw]
    dur = np.array([len(w) / predictor.sample_rate for w in waves])
    emb = predictor.embed_batch([(w, predictor.sample_rate) for w in waves])
    spk = np.array([label for _, label in dev])
    train = read_list(corpus / "train_list.txt")
    rng = np.random.default_rng(args.seed)
    cohort_files = []
    for s in sorted({label for _, label in train}):
        files = [p for p, label in train if label == s]
        cohort_files += list(rng.choice(files, size=min(args.cohort_per_speaker, len(files)), replace=False))
    cohort = unit(predictor.embed_batch(cohort_files).astype(np.float64))
    t_embed = time.time() - t0
    speakers = rng.permutation(np.unique(spk))
    half_a = np.flatnonzero(np.isin(spk, speakers[: len(speakers) // 2]))
    half_b = np.flatnonzero(np.isin(spk, speakers[len(speakers) // 2 :]))
    ver = verification(emb, dur, spk, half_a, half_b)
    opn = open_set(emb, spk, half_a, half_b, cohort, args.repeats, args.seed)
    # agreement limit: the score 95 % of same-speaker pairs exceed (5 %-FRR point of all dev pairs): only clear
    # outliers are flagged, whatever the model's EER
    a, b, y = pairs(np.arange(len(spk)), spk)
    u = unit(emb)
    dev_scores = np.einsum("ij,ij->i", u[a], u[b])
    thr = choose_operating_point(dev_scores, y, "frr", 0.05)["threshold"]
    enr = enrolment(predictor, emb, spk, raw, thr, args.seed)
    emit(
        {
            "benchmark": "calibration",
            "model": str(args.model_path),
            "corpus": str(corpus),
            "dev_utterances": len(dev),
            "dev_speakers": int(len(np.unique(spk))),
            "cohort_utterances": int(len(cohort)),
            "embedding_seconds": round(t_embed, 1),
            "verification": ver,
            "open_set": opn,
            "enrolment": enr,
            "machine": machine_info(),
            "argv": sys.argv[1:],
            "combinations_checked": len(list(itertools.product(("A->B", "B->A"), range(args.repeats)))),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
