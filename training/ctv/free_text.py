"""Free-text notes against template notes: the reader's field accuracy, and CTV Dice / laterality flips.

1. Field accuracy: generated free-text notes (training/synth/breast_notes.py) from records drawn
   from both sites' class mix; a note is right when every side's side, surgery and N stage is read
   as generated. Ambiguous notes (every kind in `AMBIGUITIES`) must all be refused.
2. CTV on held-out cohort cases (the shipped bundle): each case's Table 5 note and a free-text
   note of the same fields, read by the reader; Dice of each against the ground truth; and, for
   unilateral cases, the laterality flip written in free text (the side changed in the text, read
   again), a success when >= 90% of the predicted CTV lies on the other side of the midline; and for
   every case the nodal flip written in free text (N0 <-> N1 changed in the text, read again), a success
   when at least half of the case's nodal regions are added (N0 -> N1) or removed (N+ -> N0), as
   `oncoplan evaluate ctv` scores its template-note counterfactual.
3. `--raw`: the same notes fed to the model as written, bypassing the reader (the model hears the
   free text itself, not the Table 5 note rendered from what the reader read): how robust the text
   path is to paraphrase on its own (issue 36). The same free-text notes are drawn as without
   `--raw` (the reader draws nothing), so the two runs compare the same notes on the same cases.
   `--model-name` evaluates other weights of the bundle (e.g. `model_free_text.pt`).
4. `--text-path`: the model's own text path on raw notes, without images: a note is read right when its
   context lies nearest the context the model gives the Table 5 note of its fields, among every Table 5
   note (oncoplan.training.ctv.paraphrase.Targets); on the generated notes of part 1 and, with
   `--handwritten FILE`, on the readable notes of the hand-written fixture (which the generator never
   produced).

    python -m oncoplan.training.ctv.free_text --cohort DIR [--bundle DIR] --out DIR [--raw] [--model-name F]
    python -m oncoplan.training.ctv.free_text --out DIR --text-path [--handwritten FILE] [--notes N]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from oncoplan.ctv.note_reader import read_note
from oncoplan.ctv.notes import parse_note
from oncoplan.errors import InputError
from oncoplan.stats import dice
from oncoplan.training.synth.breast import SITES, sample_record
from oncoplan.training.synth.breast_notes import AMBIGUITIES, ambiguous_note, free_text_note

LATERALITY_MOVED = 0.9


def _generated(n: int, rng: np.random.Generator) -> list[tuple[str, tuple]]:
    """`n` generated free-text notes with their side records, both sites' class mix alternating."""
    out = []
    for i in range(n):
        record = sample_record(f"F{i}", SITES["internal" if i % 2 else "external"], rng)
        out.append((free_text_note(record.sides, rng), record.sides))
    return out


def field_accuracy(n: int = 2000, seed: int = 7, n_ambiguous: int = 200) -> dict:
    rng = np.random.default_rng(seed)
    right, wrong = 0, []
    for text, sides in _generated(n, rng):
        want = [(s.side, s.surgery, s.n_stage) for s in sides]
        try:
            got = [(s.side, s.surgery, s.n_stage) for s in read_note(text).sides]
        except InputError as exc:
            got = str(exc)
        right += got == want
        if got != want:
            wrong.append({"note": text, "want": want, "got": got})
    refused, total = Counter(), Counter()
    for i in range(n_ambiguous):
        record = sample_record(f"A{i}", SITES["internal"], rng)
        for kind in AMBIGUITIES:
            text, _ = ambiguous_note(record.sides, rng, kind)
            total[kind] += 1
            try:
                read_note(text)
            except InputError:
                refused[kind] += 1
    return {
        "notes": n,
        "seed": seed,
        "field_accuracy": right / n,
        "wrong": wrong[:20],
        "ambiguous": {k: {"notes": total[k], "refused": refused[k]} for k in AMBIGUITIES},
    }


def text_path_reading(
    bundle_dir: str | Path,
    model_name: str | None = None,
    n: int = 2000,
    seed: int = 7,
    handwritten: str | Path | None = None,
    trained_on: set[str] | None = None,
) -> dict:
    """Nearest-template accuracy of the model's text path fed raw notes (generated; hand-written);
    `trained_on` (the distillation's notes) adds the accuracy on the generated notes outside it."""
    from oncoplan.ctv.notes import SideNote, format_note
    from oncoplan.runtime.bundles import bundle_parser, load_network
    from oncoplan.training.ctv.paraphrase import Targets, text_path_accuracy

    parser = bundle_parser(bundle_dir, overrides={"text_guided": True})
    if model_name:
        parser["model_name"] = model_name
    encoder = load_network(parser).text
    targets = Targets(encoder)
    generated = _generated(n, np.random.default_rng(seed))
    sets = {
        "generated": (
            [text for text, _ in generated],
            [format_note([SideNote(s.side, s.surgery, s.n_stage) for s in sides]) for _, sides in generated],
        )
    }
    if handwritten:
        readable = [n for n in json.loads(Path(handwritten).read_text())["notes"] if "expect" in n]
        sets["handwritten"] = (
            [n["text"] for n in readable],
            [format_note([SideNote(*fields) for fields in n["expect"]]) for n in readable],
        )
    out = {"model": model_name or "model.pt", "seed": seed}
    for name, (notes, table5) in sets.items():
        if not notes:
            continue
        got = text_path_accuracy(encoder, targets, notes, table5)
        out[name] = {
            "notes": len(notes),
            "accuracy": got["accuracy"],
            "context_mse": got["mse"],
            **_unseen(notes, got["right"], trained_on),
            "wrong": [
                {"note": t, "want": w, "nearest": g}
                for t, w, g, ok in zip(notes, table5, got["nearest"], got["right"], strict=True)
                if not ok
            ][:40],
        }
    return out


def _unseen(notes: list[str], right: list[bool], trained_on: set[str] | None) -> dict:
    if trained_on is None:
        return {}
    unseen = [ok for note, ok in zip(notes, right, strict=True) if note not in trained_on]
    return {"notes_not_trained_on": len(unseen), "accuracy_not_trained_on": float(np.mean(unseen)) if unseen else None}


def ctv_free_vs_template(
    bundle_dir: str | Path,
    cohort: str | Path,
    seed: int = 11,
    limit: int | None = None,
    raw: bool = False,
    model_name: str | None = None,
) -> dict:
    """`raw`: the model is fed the free text as written instead of the reader's Table 5 note."""
    from oncoplan.ctv.predict import CTVPredictor
    from oncoplan.training.ctv.data import build_datalist, label_on_image_grid
    from oncoplan.training.ctv.evaluate import NODAL_SHARE, _left_of_midline, _load, _nodal_mask
    from oncoplan.training.synth.breast import NODE_POSITIVE

    rng = np.random.default_rng(seed)
    predictor = CTVPredictor(bundle_dir, model_name=model_name, backends=("torch",))

    def fed(text: str) -> str:
        return text if raw else read_note(text).note

    rows = []
    for item in build_datalist(str(cohort))[:limit]:
        sides = parse_note(item["note"])
        free = free_text_note(sides, rng)
        free_note = read_note(free).note
        notes = [item["note"], fed(free)]
        row = {"case_id": item["case_id"], "template": item["note"], "free_text": free, "read_as": free_note}
        positive = any(s.n_stage in NODE_POSITIVE for s in sides)
        nodal_text = free_text_note([replace(s, n_stage="N0" if positive else "N1") for s in sides], rng)
        notes.append(fed(nodal_text))
        row["free_text_nodal_flip"] = nodal_text
        if len(sides) == 1:
            other = {"left": "right", "right": "left"}
            flipped_text = free_text_note([replace(s, side=other[s.side]) for s in sides], rng)
            notes.append(fed(flipped_text))
            row["free_text_flipped"] = flipped_text
        preds = predictor.predict(item["image"], notes)
        image, affine = _load(item["image"])
        truth = label_on_image_grid(item["label"], item["image"]) > 0
        row["dice_template"], row["dice_free_text"] = dice(preds[0], truth), dice(preds[1], truth)
        if item.get("structures"):
            nodal = _nodal_mask(item["structures"], item["image"], {s.side for s in sides})
            change = float(((preds[2] & nodal).sum() - (preds[0] & nodal).sum()) / max(nodal.sum(), 1))
            row["nodal_direction"], row["nodal_change"] = ("remove" if positive else "add"), change
            row["nodal_obeyed"] = change <= -NODAL_SHARE if positive else change >= NODAL_SHARE
        if len(preds) == 4:
            left = _left_of_midline(image, affine)
            other_side = ~left if sides[0].side == "left" else left
            row["laterality_moved"] = float((preds[3] & other_side).sum() / max(preds[3].sum(), 1))
        rows.append(row)
    lat = [r["laterality_moved"] for r in rows if "laterality_moved" in r]
    nodal = {d: [r["nodal_obeyed"] for r in rows if r.get("nodal_direction") == d] for d in ("add", "remove")}
    return {
        "cohort": str(cohort),
        "model": model_name or "model.pt",
        "fed_to_model": "free text as written (raw)" if raw else "the reader's Table 5 note",
        "cases": len(rows),
        "dice_template": float(np.mean([r["dice_template"] for r in rows])),
        "dice_free_text": float(np.mean([r["dice_free_text"] for r in rows])),
        "notes_read_as_template": sum(r["read_as"] == r["template"] for r in rows),
        "laterality_flip_free_text": {
            "cases": len(lat),
            "success_rate": float(np.mean([v >= LATERALITY_MOVED for v in lat])) if lat else None,
        },
        "nodal_flip_free_text": {
            d: {"cases": len(v), "success_rate": float(np.mean(v)) if v else None} for d, v in nodal.items()
        },
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, help="held-out synthetic breast cohort (CTV part)")
    ap.add_argument("--bundle", type=Path, help="CTV bundle (default: the shipped ctv_llmseg)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--notes", type=int, default=2000)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--raw", action="store_true", help="feed the free text to the model as written (no reader)")
    ap.add_argument("--model-name", help="weights file in the bundle's models/ (default model.pt)")
    ap.add_argument("--text-path", action="store_true", help="the model's text path on raw notes (no images)")
    ap.add_argument("--handwritten", type=Path, help="with --text-path: hand-written notes (tests/data format)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from oncoplan.runtime.bundles import CTV_BUNDLE, shipped_bundles

    bundle = args.bundle or shipped_bundles() / CTV_BUNDLE
    result: dict = {"synthetic": True}
    if args.text_path:
        from oncoplan.training.ctv.paraphrase import training_notes

        recipe = json.loads((bundle / "configs" / "paraphrase.json").read_text())  # the distillation's settings
        trained = training_notes(recipe["paraphrase_seed"], recipe["paraphrase_steps"], recipe["paraphrase_batch_size"])
        result["text_path"] = text_path_reading(
            bundle, args.model_name, args.notes, handwritten=args.handwritten, trained_on=trained
        )
    else:
        result["fields"] = field_accuracy(args.notes) if args.notes else None
    if args.cohort:
        result["ctv"] = ctv_free_vs_template(
            bundle, args.cohort, limit=args.limit, raw=args.raw, model_name=args.model_name
        )
    (args.out / "free_text_notes.json").write_text(json.dumps(result, indent=2) + "\n")
    if f := result.get("fields"):
        print(f"field accuracy {f['field_accuracy']:.4f} on {f['notes']} generated notes (synthetic)")
        print("ambiguous refused:", {k: f"{v['refused']}/{v['notes']}" for k, v in f["ambiguous"].items()})
    if t := result.get("text_path"):
        for name in ("generated", "handwritten"):
            if name in t:
                unseen = (
                    f"; {t[name]['accuracy_not_trained_on']:.4f} of the {t[name]['notes_not_trained_on']} "
                    "not among the distillation's notes"
                    if t[name].get("notes_not_trained_on")
                    else ""
                )
                print(
                    f"[{t['model']}; raw notes, no reader] text path reads {t[name]['accuracy']:.4f} of "
                    f"{t[name]['notes']} {name} notes as their Table 5 note (context MSE "
                    f"{t[name]['context_mse']:.3f}){unseen}"
                )
    if "ctv" in result:
        c = result["ctv"]
        print(
            f"[{c['model']}; model fed {c['fed_to_model']}] "
            f"CTV Dice template {c['dice_template']:.4f} vs free text {c['dice_free_text']:.4f} on {c['cases']} cases; "
            f"read as the template note {c['notes_read_as_template']}/{c['cases']}; laterality flip in free text "
            f"{c['laterality_flip_free_text']['success_rate']} of {c['laterality_flip_free_text']['cases']}; "
            f"nodal flip in free text {c['nodal_flip_free_text']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
