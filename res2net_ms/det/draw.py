"""Detections drawn on the image: a box and "name score" per detection, a colour per class."""
import colorsys

from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_detections"]


def _colour(label):
    """A bright colour of its own for each label (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image, detections):
    """A PIL image: ``image`` (RGB uint8 array) with ``detections`` (see ``Detections``)."""
    canvas = Image.fromarray(image).convert("RGB")
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
