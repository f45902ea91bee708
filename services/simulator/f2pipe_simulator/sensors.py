"""Plausible, smoothly moving sensor values, and the Modbus RTU frames that carry them.

Each frame datapoint gets a ``Signal``: a mean-reverting random walk (an Ornstein-Uhlenbeck
process, stepped exactly for any time step) around a mean that follows the time of day,
kept inside a plausible band for what the datapoint measures (known by its key or unit:
temperature 18-30 degC, humidity, CO2, mains voltage, current; anything else moves inside the
middle of its chart range). A power datapoint next to voltage and current is their product
times a power factor, so the three agree the way a real meter's do.

``SensorModel.reading`` advances the signals by one publish interval and returns the frame
and the values it encodes: each value exactly as the pipeline's decoder will read it back
(integers rounded to the datapoint's decimals, float32 rounded to single precision).
"""

from __future__ import annotations

import itertools
import math
import random
import struct
from dataclasses import dataclass

from f2pipe_shared.decoding import (
    ENCODING_SIZES,
    DecodingSpec,
    Encoding,
    FrameFormat,
    TemplateDecoder,
    build_modbus_response,
    compile_template,
    encode_value,
)
from f2pipe_shared.registry import Datapoint, Template

DAY = 86_400.0
_FLOAT32 = struct.Struct("<f")


@dataclass(frozen=True, slots=True)
class Profile:
    """Where a quantity lives: a hard band, a typical mean, and how it moves."""

    low: float
    high: float
    mean: float
    daily: float  # amplitude of the day/night swing of the mean
    spread: float  # standard deviation around the (moving) mean
    tau: float  # seconds the walk takes to forget (mean reversion time)


# By datapoint key (or unit), the quantities of the demo templates and their usual relatives.
PROFILES: dict[str, Profile] = {
    "temperature": Profile(18.0, 30.0, 22.5, 1.5, 1.2, 1800.0),
    "humidity": Profile(25.0, 70.0, 45.0, 5.0, 4.0, 1800.0),
    "co2": Profile(400.0, 1500.0, 650.0, 150.0, 90.0, 1200.0),
    "voltage": Profile(225.0, 235.0, 230.0, 1.0, 1.0, 600.0),
    "current": Profile(0.5, 16.0, 5.0, 2.5, 2.0, 900.0),
    "frequency": Profile(49.9, 50.1, 50.0, 0.0, 0.02, 120.0),
    "pressure": Profile(990.0, 1030.0, 1013.0, 2.0, 4.0, 7200.0),
    "power_factor": Profile(0.85, 0.99, 0.93, 0.0, 0.02, 1800.0),
}
UNIT_PROFILES: dict[str, str] = {
    "°C": "temperature",
    "%": "humidity",
    "ppm": "co2",
    "V": "voltage",
    "A": "current",
    "Hz": "frequency",
    "hPa": "pressure",
}


def profile_for(point: Datapoint) -> Profile:
    """The band a datapoint's values move in: by key, by unit, else its chart range."""
    name = point.key if point.key in PROFILES else UNIT_PROFILES.get(point.unit or "")
    if name is not None:
        base = PROFILES[name]
    elif point.chart_min is not None and point.chart_max is not None:
        span = point.chart_max - point.chart_min
        low, high = point.chart_min + 0.25 * span, point.chart_max - 0.25 * span
        base = Profile(low, high, (low + high) / 2, span / 20, span / 12, 1800.0)
    else:
        base = Profile(10.0, 90.0, 50.0, 5.0, 8.0, 1800.0)
    assert point.spec is not None
    return _fit(base, point.spec)


def _fit(profile: Profile, spec: DecodingSpec) -> Profile:
    """Narrow a band to what the encoding can carry at the datapoint's decimals."""
    low, high = encodable_range(spec)
    if profile.low >= low and profile.high <= high:
        return profile
    new_low, new_high = max(profile.low, low), min(profile.high, high)
    if new_low >= new_high:  # nothing in common: use the middle of what fits
        span = high - low
        new_low, new_high = low + 0.25 * span, high - 0.25 * span
    mean = min(max(profile.mean, new_low), new_high)
    spread = min(profile.spread, (new_high - new_low) / 6)
    return Profile(new_low, new_high, mean, min(profile.daily, spread), spread, profile.tau)


def encodable_range(spec: DecodingSpec) -> tuple[float, float]:
    """The smallest and largest value ``spec`` can encode (float32: a sane +-1e6)."""
    scale: int = 10**spec.decimals
    if spec.encoding is Encoding.FLOAT32:
        return -1e6 / scale, 1e6 / scale
    bits = ENCODING_SIZES[spec.encoding] * 8
    if spec.encoding.value.startswith("u"):
        return 0.0, ((1 << bits) - 1) / scale
    return -(1 << (bits - 1)) / scale, ((1 << (bits - 1)) - 1) / scale


def quantize(spec: DecodingSpec, value: float) -> float:
    """``value`` as the decoder will read it back from ``encode_value(spec, value)``."""
    scale: int = 10**spec.decimals
    scaled = value * scale
    if spec.encoding is Encoding.FLOAT32:
        single: float = _FLOAT32.unpack(_FLOAT32.pack(scaled))[0]
        return single / scale
    return round(scaled) / scale


class Signal:
    """One quantity's value over time: an exact Ornstein-Uhlenbeck step per call."""

    __slots__ = ("_dt", "_factors", "_phase", "_rng", "profile", "t", "value")

    def __init__(self, profile: Profile, rng: random.Random, t: float) -> None:
        self.profile = profile
        self._rng = rng
        self._phase = rng.uniform(0, 2 * math.pi)
        self._dt = -1.0
        self._factors = (0.0, 0.0)
        self.t = t
        self.value = self._clamp(self._mean(t) + rng.gauss(0, profile.spread))

    def step(self, dt: float) -> float:
        if dt != self._dt:  # the step is (nearly) always the publish interval: compute once
            decay = math.exp(-dt / self.profile.tau)
            self._dt, self._factors = dt, (decay, self.profile.spread * math.sqrt(1 - decay**2))
        decay, noise = self._factors
        self.t += dt
        mean = self._mean(self.t)
        self.value = self._clamp(mean + (self.value - mean) * decay + self._rng.gauss(0, noise))
        return self.value

    def _mean(self, t: float) -> float:
        p = self.profile
        return p.mean + p.daily * math.sin(2 * math.pi * t / DAY + self._phase)

    def _clamp(self, value: float) -> float:
        p = self.profile
        if value < p.low:  # reflect, so the walk does not stick to the edge
            value = min(p.high, 2 * p.low - value)
        elif value > p.high:
            value = max(p.low, 2 * p.high - value)
        return value


class SensorModel:
    """A sensor device of one template: its signals, and frames with their readings."""

    __slots__ = (
        "_derived",
        "_length",
        "_overlap_decoder",
        "_points",
        "_power_factor",
        "_signals",
        "template",
    )

    def __init__(self, template: Template, rng: random.Random, t: float = 0.0) -> None:
        self.template = template
        self._length = template.data_length
        keys = {dp.key for dp in template.frame_points}
        # Power follows voltage x current x power factor when the template has all three.
        self._derived = "power" if {"power", "voltage", "current"} <= keys else None
        self._signals = {
            dp.key: Signal(profile_for(dp), rng, t)
            for dp in template.frame_points
            if dp.key != self._derived
        }
        self._power_factor = (
            Signal(PROFILES["power_factor"], rng, t) if self._derived is not None else None
        )
        # Datapoints that share bytes (two views of one register) hold what was written last:
        # for those templates the values come from decoding the finished frame data.
        specs = [dp.spec for dp in template.frame_points if dp.spec is not None]
        self._points = [
            (dp.key, spec, *encodable_range(spec))
            for dp, spec in zip(template.frame_points, specs, strict=True)
        ]
        self._overlap_decoder: TemplateDecoder | None = (
            compile_template(specs) if _overlapping(specs) else None
        )

    def reading(self, dt: float) -> tuple[bytes, dict[str, float]]:
        """Advance by ``dt`` seconds; return the frame and the values it encodes, by key."""
        values = {key: signal.step(dt) for key, signal in self._signals.items()}
        if self._derived is not None and self._power_factor is not None:
            pf = self._power_factor.step(dt)
            values[self._derived] = values["voltage"] * values["current"] * pf
        return self.frame(values)

    def frame(self, values: dict[str, float]) -> tuple[bytes, dict[str, float]]:
        """The frame carrying ``values`` (by datapoint key), and the values as decoded."""
        data = bytearray(self._length)
        readings: dict[str, float] = {}
        for key, spec, low, high in self._points:
            value = min(max(values[key], low), high)
            data[spec.offset : spec.end] = encode_value(spec, value)
            readings[key] = quantize(spec, value)
        template = self.template
        if self._overlap_decoder is not None:
            keys = [dp.key for dp in template.frame_points]
            readings = dict(zip(keys, self._overlap_decoder(data), strict=True))
        if template.frame_format is FrameFormat.MODBUS_RTU:
            function = template.modbus_function if 1 <= template.modbus_function <= 4 else 3
            return build_modbus_response(template.modbus_address, bytes(data), function), readings
        return bytes(data), readings


def _overlapping(specs: list[DecodingSpec]) -> bool:
    ordered = sorted(specs, key=lambda spec: spec.offset)
    return any(a.end > b.offset for a, b in itertools.pairwise(ordered))
