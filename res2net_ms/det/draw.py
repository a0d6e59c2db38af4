"""Detections drawn on the image: a translucent colour over each instance's mask, then a box and
"name score" per detection in a colour per class."""
import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_detections"]

MASK_ALPHA = 0.5  # weight of the mask colour: the object stays visible under it


def _colour(index):
    """A bright colour of its own for each index (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _paint_masks(image, masks):
    """``image`` with each mask blended in a colour of its own instance (so that two objects
    of one class stay apart); the best-scoring (first) instance ends on top."""
    masks = np.asarray(masks, bool)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks of shape {masks.shape} do not fit an image of "
                         f"{image.shape[1]}x{image.shape[0]} pixels (expected (M, "
                         f"{image.shape[0]}, {image.shape[1]}))")
    canvas = image.astype(np.float32)
    for index in range(len(masks) - 1, -1, -1):
        colour = np.float32(_colour(index + 1))
        canvas[masks[index]] = (1 - MASK_ALPHA) * canvas[masks[index]] + MASK_ALPHA * colour
    return np.rint(canvas).astype(np.uint8)


def draw_detections(image, detections):
    """A PIL image: ``image`` (RGB uint8 array) with ``detections`` (see ``Detections``):
    masks, when there are, then boxes and labels."""
    canvas = Image.fromarray(np.asarray(image)).convert("RGB")
    if "masks" in detections and len(detections["masks"]):
        canvas = Image.fromarray(_paint_masks(np.asarray(canvas), detections["masks"]))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(1, round(max(canvas.size) / 400))
    for box, score, label, name in zip(detections["boxes"], detections["scores"],
                                       detections["labels"], detections["names"]):
        colour = _colour(int(label))
        x1, y1, x2, y2 = (round(float(v)) for v in box)  # whole pixels: PIL truncates
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        top_y = max(0, y1 - (bottom - top) - 2)
        draw.rectangle([x1, top_y, x1 + right - left + 4, top_y + bottom - top + 2], fill=colour)
        draw.text((x1 + 2, top_y + 1 - (top - y1)), text, fill=(0, 0, 0), font=font)
    return canvas
