"""A sensor frame as hex + its template -> the template's frame values, or a ``FrameError``.

The one place that says how a ``tele …/sensor-<n>`` payload's ``data`` becomes values: the
processor decodes every sensor message with it (``f2pipe_processor.decoder``), and the api's
"try a decoder" endpoint answers with it, so both give the same values and the same
dead-letter reason and detail for the same frame and template.
"""

from __future__ import annotations

from dataclasses import dataclass

from f2pipe_shared.decoding import (
    FrameFormat,
    TemplateDecoder,
    compile_template,
    frame_data,
    parse_hex_frame,
)
from f2pipe_shared.registry import Datapoint, Template


@dataclass(frozen=True, slots=True)
class FrameDecoder:
    """A template's frame datapoints compiled once: call it with a frame's hex."""

    frame_format: FrameFormat
    verify_crc: bool
    points: tuple[Datapoint, ...]  # the template's frame datapoints, in the order of the values
    decode_data: TemplateDecoder

    @classmethod
    def compile(cls, template: Template) -> FrameDecoder | None:
        """None when the template decodes no frame (no frame format or no frame datapoints):
        the processor dead-letters a sensor message with such a template (unmapped_position)."""
        specs = [dp.spec for dp in template.frame_points if dp.spec is not None]
        if template.frame_format is None or not specs:
            return None
        return cls(
            frame_format=template.frame_format,
            verify_crc=template.verify_crc,
            points=template.frame_points,
            decode_data=compile_template(specs),
        )

    def __call__(self, hex_frame: str) -> list[float]:
        """The frame's values, one per datapoint of ``points``; a ``FrameError`` subclass
        (``bad_hex``, ``short_frame``, ``crc_mismatch``, ``bad_frame``) when it has none."""
        data = frame_data(parse_hex_frame(hex_frame), self.frame_format, verify_crc=self.verify_crc)
        return self.decode_data(data)


def decode_frame(hex_frame: str, template: Template) -> list[tuple[Datapoint, float]] | None:
    """Each frame datapoint of ``template`` with its value in ``hex_frame``; None when the
    template decodes no frame; raises ``FrameError`` as the processor dead-letters it."""
    decoder = FrameDecoder.compile(template)
    if decoder is None:
        return None
    return list(zip(decoder.points, decoder(hex_frame), strict=True))
