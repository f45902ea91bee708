// One controller: its details, commands (operator), latest values with a chart of the last
// hour per datapoint that extends live, door/exit/motion states, recent events, connectors
// and pins (editable by operators), and certificates (revocable by admins, with a confirm).
import uPlot from "./vendor/uPlot.esm.js";
import { useEffect, useRef, useState } from "./vendor/htm-preact.js";
import { get, post, request, stream } from "./api.js";
import { Commands } from "./commands.js";
import { ago, Badge, can, CopyButton, Field, html, Problem, Table, useAsync, useTick, when, options } from "./ui.js";

const JS = ["J1", "J2", "J3", "J4"];
const MODES = ["access-control-mode", "alarm-mode", "sensor-mode"];
const MAX_POINTS = 720;

function Details({ me, controller, reload }) {
  const [editing, setEditing] = useState(false);
  const [form, setForm] = useState(controller);
  const [error, setError] = useState(null);
  const [code, setCode] = useState(null);
  async function save(e) {
    e.preventDefault();
    try {
      await request("PATCH", `/v1/controllers/${controller.mac}`,
        { body: { name: form.name, site: form.site || null, notes: form.notes || null } });
      setEditing(false); setError(null); reload();
    } catch (err) { setError(err); }
  }
  async function rotate() {
    if (!confirm(`Rotate the claim code of ${controller.name}? The current one stops working.`)) return;
    try { setCode((await post(`/v1/controllers/${controller.mac}/claim-code`)).claim_code); }
    catch (err) { setError(err); }
  }
  const set = (k) => (e) => setForm({ ...form, [k]: e.target.value });
  return html`<section aria-labelledby="details-title" class="card">
    <h2 id="details-title">Details</h2>
    ${editing ? html`<form onSubmit=${save} class="grid">
        <${Field} label="Name"><input required maxlength="200" value=${form.name} onInput=${set("name")} /><//>
        <${Field} label="Site"><input maxlength="200" value=${form.site || ""} onInput=${set("site")} /><//>
        <${Field} label="Notes"><input maxlength="2000" value=${form.notes || ""} onInput=${set("notes")} /><//>
        <div class="actions"><button type="submit">Save</button>
          <button type="button" class="secondary" onClick=${() => setEditing(false)}>Cancel</button></div>
      </form>`
    : html`<dl class="facts">
        <dt>MAC</dt><dd><code>${controller.mac}</code></dd>
        <dt>Site</dt><dd>${controller.site || "—"}</dd>
        <dt>Notes</dt><dd>${controller.notes || "—"}</dd>
        <dt>Claim code</dt><dd>${controller.claim_code_pending ? "stored (the controller may enrol with it)" : "none"}</dd>
        <dt>Registered</dt><dd>${when(controller.created_at)}</dd>
      </dl>
      ${can(me, "operator") ? html`<div class="actions">
        <button type="button" class="secondary" onClick=${() => { setForm(controller); setEditing(true); }}>Edit</button>
        <button type="button" class="secondary" onClick=${rotate}>New claim code</button></div>` : ""}`}
    ${code ? html`<div class="once" role="status"><p>New claim code, shown this once:
        <code data-testid="claim-code">${code}</code></p><${CopyButton} text=${code} /></div>` : ""}
    <${Problem} error=${error} />
  </section>`;
}

function Chart({ point, unit }) {
  const box = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    const data = [point.series.map((p) => Date.parse(p.t) / 1000), point.series.map((p) => p.v)];
    const width = Math.max(240, box.current.clientWidth || 480);
    plot.current = new uPlot({
      width, height: 160, legend: { show: false }, cursor: { show: true },
      scales: { x: { time: true } },
      series: [{}, { label: `${point.label}${unit ? ` (${unit})` : ""}`, stroke: "#1d5fbf", width: 1.5 }],
      axes: [{}, { size: 56 }],
    }, data, box.current);
    point.plot = plot.current;
    const observer = new ResizeObserver(() => plot.current.setSize({ width: Math.max(240, box.current.clientWidth), height: 160 }));
    observer.observe(box.current);
    return () => { observer.disconnect(); plot.current.destroy(); point.plot = null; };
  }, [point]);
  return html`<div class="chart" ref=${box} role="img"
      aria-label=${`${point.label}: the last hour, ${point.series.length} points`}></div>`;
}

function stateText(key, value) {
  const on = value >= 0.5;
  if (/door/.test(key)) return on ? "open" : "closed";
  if (/exit|button/.test(key)) return on ? "pressed" : "released";
  if (/motion/.test(key)) return on ? "motion" : "still";
  return on ? "on" : "off";
}

function Telemetry({ mac }) {
  const { data, error } = useAsync(() => get(`/v1/controllers/${mac}/telemetry`, { minutes: 60 }), [mac]);
  const [, bump] = useState(0);
  const now = useTick(1000);
  useEffect(() => {
    if (!data) return undefined;
    const index = new Map();
    for (const d of data.devices) for (const p of d.datapoints) index.set(`${d.id}/${p.id}`, p);
    return stream((event, frame) => {
      if (event === "event" && frame.kind !== "connectivity") {
        data.events = [{ timestamp: frame.timestamp, device: frame.device, kind: frame.kind, data: frame.data },
                       ...data.events].slice(0, 20);
        bump((n) => n + 1);
        return;
      }
      if (event !== "reading") return;
      const p = index.get(`${frame.device_id}/${frame.datapoint_id}`);
      if (!p || frame.value === null) return;
      if (!p.latest || frame.timestamp >= p.latest.t) p.latest = { t: frame.timestamp, v: frame.value };
      p.series.push({ t: frame.timestamp, v: frame.value });
      if (p.series.length > MAX_POINTS) p.series.shift();
      p.plot?.setData([p.series.map((s) => Date.parse(s.t) / 1000), p.series.map((s) => s.v)]);
      bump((n) => n + 1);
    }, { macs: [mac] });
  }, [data]);
  if (error) return html`<${Problem} error=${error} />`;
  if (!data) return html`<p>Loading telemetry…</p>`;
  const rows = [];
  for (const d of data.devices) {
    for (const p of d.datapoints) {
      const value = p.latest ? (p.kind === "state" ? stateText(p.key, p.latest.v) : `${+p.latest.v.toFixed(3)} ${p.unit || ""}`) : "—";
      rows.push(html`<tr data-datapoint=${`${d.id}/${p.key}`}>
        <th scope="row">${d.name}<br /><small>${d.connector ? `${d.connector} ${d.component}` : "controller"}</small></th>
        <td>${p.label}</td>
        <td class="num" data-testid="value">${p.kind === "state" && p.latest ? html`<span class="state">${value}</span>` : value}</td>
        <td>${p.latest ? ago(p.latest.t, now) : "no value yet"}</td>
      </tr>`);
    }
  }
  const charts = data.devices.flatMap((d) => d.datapoints.filter((p) => p.kind === "number").map((p) => ({ d, p })));
  return html`<section aria-labelledby="values-title" class="card">
    <h2 id="values-title">Latest values</h2>
    <p class="hint">${data.messages_per_minute.toFixed(1)} messages/min over the last 10 minutes.</p>
    <${Table} caption="Each datapoint's newest value" testid="values" head=${["Device", "Datapoint", "Value", "Age"]}
      rows=${rows} empty="Nothing sits on this controller's pins yet." />
    <h3>The last hour</h3>
    <div class="charts">${charts.map(({ d, p }) => html`<figure>
      <figcaption>${d.name}: ${p.label}${p.unit ? ` (${p.unit})` : ""}</figcaption>
      <${Chart} point=${p} unit=${p.unit} /></figure>`)}</div>
    <h3>Recent events</h3>
    <${Table} caption="The newest events" head=${["When", "Device", "Kind", "Data"]}
      rows=${data.events.map((e) => html`<tr><td>${when(e.timestamp)}</td><td>${e.device}</td>
        <td>${e.kind}</td><td><code>${JSON.stringify(e.data)}</code></td></tr>`)} empty="No events yet." />
  </section>`;
}

function Layout({ me, mac }) {
  const layout = useAsync(() => get(`/v1/controllers/${mac}/connectors`), [mac]);
  const templates = useAsync(() => (can(me, "operator") ? get("/v1/templates", { limit: 1000 }) : Promise.resolve({ items: [] })), [mac]);
  const [error, setError] = useState(null);
  const [pin, setPin] = useState({ connector: "J1", component: "sensor-1", template: "", device_name: "" });
  const [mode, setMode] = useState({ connector: "J1", mode: "sensor-mode" });
  async function act(fn) { try { await fn(); setError(null); layout.reload(); } catch (e) { setError(e); } }
  const connectors = layout.data || [];
  return html`<section aria-labelledby="layout-title" class="card">
    <h2 id="layout-title">Connectors and pins</h2>
    <${Table} caption="What sits where" testid="layout" head=${["Connector", "Mode", "Pin", "Device", "Template", ""]}
      rows=${connectors.flatMap((c) => (c.pins.length ? c.pins : [null]).map((p) => html`<tr>
        <th scope="row">${c.name}</th><td>${c.mode}</td><td>${p ? p.component : "—"}</td>
        <td>${p ? p.device.name : "—"}</td><td>${p ? p.device.template || "—" : "—"}</td>
        <td>${p && can(me, "admin") ? html`<button type="button" class="danger" onClick=${() => confirm(`Empty ${c.name}/${p.component}? Its device and readings stay.`)
          && act(() => request("DELETE", `/v1/controllers/${mac}/connectors/${c.name}/pins/${p.component}`))}>Empty pin</button>` : ""}</td>
      </tr>`))} empty="No connector is configured." />
    ${can(me, "operator") ? html`<div class="forms">
      <form class="grid" onSubmit=${(e) => { e.preventDefault(); act(() => request("PUT", `/v1/controllers/${mac}/connectors/${mode.connector}`, { body: { mode: mode.mode } })); }}>
        <h3>Set a connector's mode</h3>
        <${Field} label="Connector"><select value=${mode.connector} onChange=${(e) => setMode({ ...mode, connector: e.target.value })}>
          ${options(JS, mode.connector)}</select><//>
        <${Field} label="Mode"><select value=${mode.mode} onChange=${(e) => setMode({ ...mode, mode: e.target.value })}>
          ${options(MODES, mode.mode)}</select><//>
        <div class="actions"><button type="submit">Set mode</button></div>
      </form>
      <form class="grid" onSubmit=${(e) => { e.preventDefault(); act(() => request("PUT", `/v1/controllers/${mac}/connectors/${pin.connector}/pins/${pin.component}`, { body: { template: pin.template, device_name: pin.device_name } })); }}>
        <h3>Put a device on a pin</h3>
        <${Field} label="Connector"><select value=${pin.connector} onChange=${(e) => setPin({ ...pin, connector: e.target.value })}>
          ${options(JS, pin.connector)}</select><//>
        <${Field} label="Pin" hint="sensor-1…6, motion-sensor-1…5, door-sensors, …"><input required value=${pin.component} onInput=${(e) => setPin({ ...pin, component: e.target.value })} /><//>
        <${Field} label="Template"><select required value=${pin.template} onChange=${(e) => setPin({ ...pin, template: e.target.value })}>
          ${options([["", "choose…"], ...(templates.data?.items || []).map((t) => [t.key, `${t.name} (${t.key})`])], pin.template)}</select><//>
        <${Field} label="Device name"><input required maxlength="200" value=${pin.device_name} onInput=${(e) => setPin({ ...pin, device_name: e.target.value })} /><//>
        <div class="actions"><button type="submit">Put device</button></div>
      </form></div>` : ""}
    <${Problem} error=${error || layout.error} />
  </section>`;
}

function Certificates({ me, mac }) {
  const certs = useAsync(() => get(`/v1/controllers/${mac}/certificates`), [mac]);
  const [error, setError] = useState(null);
  async function revoke(serial) {
    if (!confirm(`Revoke certificate ${serial}? The controller can no longer connect with it.`)) return;
    try { await post(`/v1/controllers/${mac}/certificates/${serial}/revoke`, { reason: "unspecified" }); certs.reload(); setError(null); }
    catch (e) { setError(e); }
  }
  return html`<section aria-labelledby="certs-title" class="card">
    <h2 id="certs-title">Certificates</h2>
    <${Table} caption="Newest first" testid="certificates" head=${["Serial", "Status", "Valid until", ""]}
      rows=${(certs.data?.items || []).map((c) => html`<tr data-serial=${c.serial}>
        <th scope="row"><code>${c.serial}</code></th><td><${Badge} status=${c.status} /></td><td>${when(c.not_after)}</td>
        <td>${c.status === "valid" && can(me, "admin") ? html`<button type="button" class="danger" onClick=${() => revoke(c.serial)}>Revoke</button>` : ""}</td>
      </tr>`)} empty=${certs.loading ? "Loading…" : "No certificate: the controller has not enrolled."} />
    <${Problem} error=${error || certs.error} />
  </section>`;
}

export function Controller({ me, mac }) {
  const { data, error, reload } = useAsync(() => get(`/v1/controllers/${mac}`), [mac]);
  const now = useTick(2000);
  const [status, setStatus] = useState(null);
  useEffect(() => stream((event, frame) => {
    if (event === "connectivity") setStatus({ status: frame.data.status, last_seen: frame.data.last_seen });
    else if (event === "reading" || event === "event") setStatus((s) => ({ status: "online", ...s, last_seen: frame.timestamp }));
  }, { macs: [mac] }), [mac]);
  if (error) return html`<section><h1>Controller ${mac}</h1><${Problem} error=${error} /></section>`;
  if (!data) return html`<p>Loading…</p>`;
  const current = { status: data.status, last_seen: data.last_seen, ...(status || {}) };
  return html`<article aria-labelledby="controller-title">
    <p><a href="#/fleet">← Fleet</a></p>
    <h1 id="controller-title">${data.name} <${Badge} status=${current.status} /></h1>
    <p class="hint">Last seen ${ago(current.last_seen, now)}.</p>
    <div class="columns">
      <${Details} me=${me} controller=${data} reload=${reload} />
      <${Commands} me=${me} mac=${mac} />
    </div>
    <${Telemetry} mac=${mac} />
    <${Layout} me=${me} mac=${mac} />
    <${Certificates} me=${me} mac=${mac} />
  </article>`;
}
