"""Bulk import and export of controllers with their connectors and pins: the file formats and
their validation. Pure: no I/O; the template catalogue comes in as plain data
(bulk_store.py reads it from the registry, bulk_routes.py wires both to HTTP).

One file row is one pin (docs/api.md, "Bulk import and export"):

    mac,name,site,notes,connector,mode,component,template,device_name

A controller's rows repeat its own fields and must be consecutive; a controller without
connectors is one row with the connector columns empty, a connector without pins one row with
the pin columns empty. The JSON form nests the same data (controllers → connectors → pins) and
is flattened into the same rows, so both forms meet the same rules.

Every bad row is reported (up to MAX_REPORTED_ERRORS, with the total) with its line (CSV) or
its location (JSON), a machine `reason` and a human `detail`; a detail never repeats the value
sent. A file whose shape is wrong (encoding, header, size) is reported as one error and not
read further: its rows would only add noise.
"""

from __future__ import annotations

import csv
import io
import re
from _csv import Reader
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from f2pipe_shared.topics import normalize_mac

COLUMNS: Final = (
    "mac", "name", "site", "notes", "connector", "mode", "component", "template", "device_name",
)  # fmt: skip
REQUIRED_COLUMNS: Final = frozenset({"mac", "name"})
CONNECTORS: Final = ("J1", "J2", "J3", "J4")
MODES: Final = ("access-control-mode", "alarm-mode", "sensor-mode")
# The registry's pins_component_format: the controllers' components (docs/mqtt_topics.md).
COMPONENT = re.compile(
    r"(sensor-[1-6]|motion-sensor-[1-5]|reader-[1-9]|strike-[12]|siren-[12]"
    r"|door-sensors|exit-buttons)"
)
_POSITION = re.compile(r"-[0-9]+$")

# 10,000 controllers with 12 pins each are 120,000 rows of ~120 bytes (15 MB): both limits
# leave room for that and bound the work one request can ask for.
MAX_ROWS: Final = 200_000
MAX_BODY_BYTES: Final = 32 * 1024 * 1024
MAX_REPORTED_ERRORS: Final = 1000
MAX_NAME: Final = 200
MAX_NOTES: Final = 4000
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
_TEXT_FIELDS: Final = (("name", MAX_NAME), ("site", MAX_NAME), ("notes", MAX_NOTES),
                       ("device_name", MAX_NAME))  # fmt: skip

Loc = tuple[str | int, ...]
Fail = Callable[[str, str, str], None]  # (column, reason, detail): report one bad value


@dataclass(frozen=True, slots=True)
class BulkError:
    """One bad row: where (`line` for CSV, `loc` inside it or inside the JSON), why."""

    line: int | None
    loc: Loc
    reason: str
    detail: str


class Template(NamedTuple):
    """A template as the import needs it: ids, and its device type's component and mode
    (both None for a controller type, whose devices sit on no pin)."""

    id: int
    type_id: int
    component: str | None
    mode: str | None


Catalog = Mapping[str, Template]  # template key -> template


class Row(NamedTuple):
    """One file row as text, with where it came from."""

    line: int | None
    at: Loc  # the JSON location of the row's object; () for CSV
    mac: str
    name: str
    site: str
    notes: str
    connector: str
    mode: str
    component: str
    template: str
    device_name: str


@dataclass(slots=True)
class Pin:
    line: int | None
    component: str
    template: str
    template_id: int
    type_id: int
    device_name: str


@dataclass(slots=True)
class Connector:
    line: int | None
    name: str
    mode: str
    pins: dict[str, Pin] = field(default_factory=dict)


@dataclass(slots=True)
class Controller:
    line: int | None
    mac: str
    name: str
    site: str | None
    notes: str | None
    connectors: dict[str, Connector] = field(default_factory=dict)


class Errors:
    """The errors found so far: the first MAX_REPORTED_ERRORS kept, all counted."""

    def __init__(self, limit: int = MAX_REPORTED_ERRORS) -> None:
        self.items: list[BulkError] = []
        self.total = 0
        self.limit = limit

    def add(self, line: int | None, loc: Loc, reason: str, detail: str) -> None:
        self.total += 1
        if len(self.items) < self.limit:
            self.items.append(BulkError(line, loc, reason, detail))

    def __bool__(self) -> bool:
        return self.total > 0


@dataclass
class Parsed:
    """A file read into rows: `rows` is empty when the file's shape was wrong."""

    rows: list[Row]
    errors: Errors


@dataclass
class Plan:
    """What the file asks for: the controllers with no bad row, and every error."""

    controllers: list[Controller]
    errors: Errors
    rows: int


# -- CSV ----------------------------------------------------------------------------------


def parse_csv(data: bytes, *, max_rows: int = MAX_ROWS) -> Parsed:
    errors = Errors()
    text = _decode(data, errors)
    if text is None:
        return Parsed([], errors)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        columns = _header(header, errors)
        if columns is None:
            return Parsed([], errors)
        rows = list(_csv_rows(reader, columns, errors, max_rows))
    except csv.Error as exc:
        # Python's message names the rule broken (a stray quote, a NUL), not the data.
        errors.add(reader.line_num, (), "malformed_csv", f"Not valid CSV: {exc}.")
        return Parsed([], errors)
    if errors.total and any(e.reason == "too_many_rows" for e in errors.items):
        return Parsed([], errors)
    return Parsed(rows, errors)


def _decode(data: bytes, errors: Errors) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        errors.add(line, (), "invalid_encoding", "The file is not UTF-8 (save it as CSV UTF-8).")
        return None
    return text.removeprefix("\ufeff")  # the byte order mark spreadsheets write


def _header(header: list[str] | None, errors: Errors) -> list[str] | None:
    if not header or header == [""]:
        errors.add(1, (), "empty_file", f"The first line must name the columns: {COLUMNS}.")
        return None
    names = [h.strip() for h in header]
    for i, name in enumerate(names):
        if name not in COLUMNS:
            errors.add(1, ("header", i + 1), "unknown_column",
                       f"Column {i + 1} is not one of {', '.join(COLUMNS)}.")  # fmt: skip
        elif name in names[:i]:
            errors.add(1, ("header", i + 1), "duplicate_column",
                       f"Column {name} is named twice.")  # fmt: skip
    for name in sorted(REQUIRED_COLUMNS - set(names)):
        errors.add(1, ("header", name), "missing_column", f"The column {name} is required.")
    return None if errors else names


def _csv_rows(reader: Reader, columns: list[str], errors: Errors, max_rows: int) -> Iterator[Row]:
    width = len(columns)
    indexes = [columns.index(c) if c in columns else -1 for c in COLUMNS]
    count = 0
    end = reader.line_num  # a record starts on the line after the last one read (a quoted
    for fields in reader:  # newline makes a record span lines)
        start, end = end + 1, reader.line_num
        if not fields:
            continue  # a blank line
        count += 1
        if count > max_rows:
            errors.add(start, (), "too_many_rows", f"A file may have at most {max_rows} rows.")
            return
        if len(fields) != width:
            errors.add(start, (), "wrong_field_count",
                       f"The row has {len(fields)} fields; the header names {width}.")  # fmt: skip
            continue
        # Values are taken as they are (no stripping): an export imports back unchanged.
        yield Row(start, (), *[fields[i] if i >= 0 else "" for i in indexes])


# -- JSON ---------------------------------------------------------------------------------

_Name = Annotated[str, Field(max_length=MAX_NAME)]


class PinDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    component: str = Field(max_length=32, examples=["sensor-1"])
    template: str = Field(max_length=100, examples=["environmental-sensor-v1"])
    device_name: _Name | None = Field(None, description="default f2-<mac>/<connector>/<component>")


class ConnectorDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=8, examples=["J3"], description="J1, J2, J3 or J4")
    mode: str = Field(max_length=32, examples=["sensor-mode"], description=" | ".join(MODES))
    pins: list[PinDoc] = Field(default_factory=list, max_length=32)


class ControllerDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mac: str = Field(max_length=32, examples=["aabbccddee01"])
    name: _Name = Field(examples=["Warehouse door 3"])
    site: _Name | None = Field(None, examples=["berlin-1"])
    notes: str | None = Field(None, max_length=MAX_NOTES)
    connectors: list[ConnectorDoc] = Field(default_factory=list, max_length=4)


class BulkDocument(BaseModel):
    """The JSON form of an import, and of an export: the same document imports back."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "controllers": [
                        {
                            "mac": "aabbccddee01",
                            "name": "Warehouse door 3",
                            "site": "berlin-1",
                            "notes": None,
                            "connectors": [
                                {
                                    "name": "J3",
                                    "mode": "sensor-mode",
                                    "pins": [
                                        {
                                            "component": "sensor-1",
                                            "template": "environmental-sensor-v1",
                                            "device_name": "Cold room 1",
                                        }
                                    ],
                                }
                            ],
                        }
                    ]
                }
            ]
        },
    )

    controllers: list[ControllerDoc] = Field(max_length=MAX_ROWS)


_DOCUMENT = TypeAdapter(BulkDocument)
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def parse_json(data: bytes, *, max_rows: int = MAX_ROWS) -> Parsed:
    errors = Errors()
    try:
        document = _DOCUMENT.validate_json(data)
    except ValidationError as exc:
        for e in exc.errors(include_input=False, include_url=False):
            loc = tuple(p if isinstance(p, int) or _PLAIN.fullmatch(p) else "?" for p in e["loc"])
            reason = "invalid_json" if e["type"] == "json_invalid" else "invalid_field"
            errors.add(None, loc, reason, str(e["msg"]))
        return Parsed([], errors)
    rows = list(_flatten(document, errors))
    if len(rows) > max_rows:
        errors.add(None, (), "too_many_rows", f"A file may have at most {max_rows} rows (pins).")
        return Parsed([], errors)
    return Parsed(rows, errors)


def _flatten(document: BulkDocument, errors: Errors) -> Iterator[Row]:
    """The document as file rows, so JSON meets the CSV's rules."""
    for i, c in enumerate(document.controllers):
        base = (c.mac, c.name, c.site or "", c.notes or "")
        if not c.connectors:
            yield Row(None, ("controllers", i), *base, "", "", "", "", "")
        seen: set[str] = set()
        for j, k in enumerate(c.connectors):
            at: Loc = ("controllers", i, "connectors", j)
            if k.name in seen:
                errors.add(None, (*at, "name"), "duplicate_connector",
                           "The controller lists this connector twice.")  # fmt: skip
            seen.add(k.name)
            if not k.pins:
                yield Row(None, at, *base, k.name, k.mode, "", "", "")
            for n, p in enumerate(k.pins):
                yield Row(None, (*at, "pins", n), *base, k.name, k.mode, p.component,
                          p.template, p.device_name or "")  # fmt: skip


# -- the rules ----------------------------------------------------------------------------


def default_device_name(mac: str, connector: str, component: str) -> str:
    """As seed-demo names its devices: f2-<mac>/<connector>/<component>."""
    return f"f2-{mac}/{connector}/{component}"


def validate(parsed: Parsed, catalog: Catalog) -> Plan:
    """Every rule a row must meet, against the registry's templates; the controllers with no
    bad row, in file order."""
    errors = parsed.errors
    controllers: dict[str, Controller] = {}
    bad: set[str] = set()
    previous = ""
    for row in parsed.rows:
        before = errors.total
        mac = _row(row, errors, controllers, previous, catalog)
        if mac is not None:
            previous = mac
            if errors.total > before:
                bad.add(mac)
    good = [c for mac, c in controllers.items() if mac not in bad]
    return Plan(good, errors, len(parsed.rows))


def _row(
    row: Row, errors: Errors, controllers: dict[str, Controller], previous: str, catalog: Catalog
) -> str | None:
    """Check one row and add it to its controller; the row's MAC (None when unreadable)."""

    def fail(column: str, reason: str, detail: str) -> None:
        errors.add(row.line, (*row.at, column) if row.at else (column,), reason, detail)

    try:
        mac = normalize_mac(row.mac)
    except ValueError:
        fail("mac", "invalid_mac", "A MAC is 12 hex digits, optionally in pairs (aa:bb:...).")
        return None
    _texts(row, fail)
    controller = controllers.get(mac)
    if controller is None:
        controller = Controller(row.line, mac, row.name, row.site or None, row.notes or None)
        controllers[mac] = controller
    elif mac != previous:
        fail("mac", "duplicate_mac", f"Controller {mac} appeared before (line "
             f"{controller.line}); its rows must be consecutive.")  # fmt: skip
    elif (row.name, row.site or None, row.notes or None) != (
        controller.name, controller.site, controller.notes,
    ):  # fmt: skip
        fail("name", "controller_mismatch", "name, site and notes must be the same on every "
             f"row of controller {mac}.")  # fmt: skip
    _connector(row, mac, controller, fail, catalog)
    return mac


def _texts(row: Row, fail: Fail) -> None:
    if not row.name:
        fail("name", "missing_value", "Every controller needs a name.")
    for column, limit in _TEXT_FIELDS:
        value: str = getattr(row, column)
        if len(value) > limit:
            fail(column, "too_long", f"{column} may have at most {limit} characters.")
        if value.startswith(FORMULA_STARTS):
            fail(column, "formula_like", f"{column} may not start with = + - @ or a tab: a "
                 "spreadsheet would run it as a formula.")  # fmt: skip
        if "\x00" in value or (column != "notes" and not value.isprintable()):
            fail(column, "control_character", f"{column} may not contain control characters.")


def _connector(row: Row, mac: str, controller: Controller, fail: Fail, catalog: Catalog) -> None:
    if not row.connector:
        if row.mode or row.component or row.template or row.device_name:
            fail("connector", "missing_value", "A row with a mode or a pin needs its connector.")
        return
    if row.connector not in CONNECTORS:
        fail("connector", "unknown_connector", "A connector is J1, J2, J3 or J4.")
        return
    if row.mode not in MODES:
        fail("mode", "unknown_mode", f"A connector's mode is one of {', '.join(MODES)}.")
        return
    connector = controller.connectors.get(row.connector)
    if connector is None:
        connector = Connector(row.line, row.connector, row.mode)
        controller.connectors[row.connector] = connector
    elif connector.mode != row.mode:
        fail("mode", "connector_mismatch", f"{row.connector} of {mac} has another mode on "
             f"line {connector.line}.")  # fmt: skip
        return
    _pin(row, mac, connector, fail, catalog)


def _pin(row: Row, mac: str, connector: Connector, fail: Fail, catalog: Catalog) -> None:
    if not row.component:
        if row.template or row.device_name:
            fail("component", "missing_value", "A row with a template needs its component.")
        return
    if not COMPONENT.fullmatch(row.component):
        fail("component", "invalid_component", "A component is sensor-1..6, "
             "motion-sensor-1..5, reader-1..9, strike-1..2, siren-1..2, door-sensors or "
             "exit-buttons.")  # fmt: skip
        return
    found = _template(row, connector, catalog)
    if not isinstance(found, Template):
        fail(*found)
        return
    if row.component in connector.pins:
        earlier = connector.pins[row.component].line
        where = "" if earlier is None else f" (line {earlier})"
        fail("component", "duplicate_pin",
             f"{connector.name} {row.component} of {mac} is listed twice{where}.")  # fmt: skip
        return
    name = row.device_name or default_device_name(mac, connector.name, row.component)
    connector.pins[row.component] = Pin(
        row.line, row.component, row.template, found.id, found.type_id, name
    )


def _template(row: Row, connector: Connector, catalog: Catalog) -> Template | tuple[str, str, str]:
    """The pin's template, or what is wrong with the pin: (column, reason, detail)."""
    if not row.template:
        return "template", "missing_value", "A pin needs the template of the device on it."
    template = catalog.get(row.template)
    if template is None:
        return "template", "unknown_template", "No template with this key is registered."
    if template.component is None or template.mode is None:
        return ("template", "controller_template", "This template is of a controller type; a "
                "controller sits on no pin.")  # fmt: skip
    if _POSITION.sub("", row.component) != template.component:
        return ("component", "component_mismatch", f"A device of this template answers to "
                f"{template.component}, not to {row.component}.")  # fmt: skip
    if template.mode != connector.mode:
        return ("mode", "mode_mismatch", f"A device of this template needs a connector in "
                f"{template.mode}; {connector.name} is in {connector.mode}.")  # fmt: skip
    return template


# -- export -------------------------------------------------------------------------------


class ExportRow(NamedTuple):
    """One row of the export query: a pin, or a connector or controller without one."""

    mac: str
    name: str
    site: str | None
    notes: str | None
    connector: str | None
    mode: str | None
    component: str | None
    template: str | None
    device_name: str | None


def export_csv(rows: Iterable[ExportRow]) -> str:
    """The file that imports back unchanged: the columns in COLUMNS' order, ordered rows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(tuple("" if v is None else v for v in row) for row in rows)
    return out.getvalue()


def export_document(rows: Iterable[ExportRow]) -> dict[str, Any]:
    """The JSON form of the same rows (rows of one controller, then connector, together)."""
    controllers: list[dict[str, Any]] = []
    last_mac = last_connector = None
    for r in rows:
        if r.mac != last_mac:
            controllers.append({"mac": r.mac, "name": r.name, "site": r.site, "notes": r.notes,
                                "connectors": []})  # fmt: skip
            last_mac, last_connector = r.mac, None
        connectors: list[dict[str, Any]] = controllers[-1]["connectors"]
        if r.connector is not None and r.connector != last_connector:
            connectors.append({"name": r.connector, "mode": r.mode, "pins": []})
            last_connector = r.connector
        if r.component is not None:
            connectors[-1]["pins"].append({"component": r.component, "template": r.template,
                                           "device_name": r.device_name})  # fmt: skip
    return {"controllers": controllers}


def claim_codes_csv(codes: Sequence[tuple[str, str]]) -> str:
    """The new controllers' claim codes, `mac,claim_code`, for the import's answer."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("mac", "claim_code"))
    writer.writerows(codes)
    return out.getvalue()
