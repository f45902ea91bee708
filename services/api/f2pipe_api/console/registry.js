// The registry: add controllers (their claim code shown once), templates with a datapoint
// editor that decodes a sample frame through the api as you type, and the bulk import
// (a dry run lists every bad row; apply only after a clean one; claim codes shown once).
import { useEffect, useRef, useState } from "./vendor/htm-preact.js";
import { get, post, request } from "./api.js";
import { can, CopyButton, Field, html, Problem, Table, useAsync, options } from "./ui.js";

const ENCODINGS = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "float32"];
const BYTE_ORDERS = ["big", "little", "word_swapped"];

function ClaimCode({ mac, code }) {
  return html`<div class="once" role="status"><p>Claim code of <code>${mac}</code>, shown this once:
    <code data-testid="claim-code">${code}</code></p><${CopyButton} text=${code} /></div>`;
}

export function Registry({ me }) {
  const list = useAsync(() => get("/v1/controllers", { limit: 200 }), []);
  const [form, setForm] = useState({ mac: "", name: "", site: "", notes: "" });
  const [created, setCreated] = useState(null);
  const [error, setError] = useState(null);
  async function add(e) {
    e.preventDefault();
    try {
      const body = { mac: form.mac.trim(), name: form.name.trim(), site: form.site.trim() || null, notes: form.notes.trim() || null };
      setCreated(await post("/v1/controllers", body));
      setForm({ mac: "", name: "", site: "", notes: "" });
      setError(null);
      list.reload();
    } catch (err) { setError(err); }
  }
  const set = (k) => (e) => setForm({ ...form, [k]: e.target.value });
  return html`<section aria-labelledby="registry-title">
    <h1 id="registry-title">Registry</h1>
    ${can(me, "operator") ? html`<form class="grid card" onSubmit=${add}>
      <h2>Register a controller</h2>
      <${Field} label="MAC" hint="12 hex digits; colons allowed"><input required value=${form.mac} onInput=${set("mac")} /><//>
      <${Field} label="Name"><input required maxlength="200" value=${form.name} onInput=${set("name")} /><//>
      <${Field} label="Site"><input maxlength="200" value=${form.site} onInput=${set("site")} /><//>
      <${Field} label="Notes"><input maxlength="2000" value=${form.notes} onInput=${set("notes")} /><//>
      <div class="actions"><button type="submit">Register</button></div>
      <${Problem} error=${error} />
      ${created ? html`<${ClaimCode} mac=${created.mac} code=${created.claim_code} />` : ""}
    </form>` : ""}
    <p>Connectors and pins are edited on each controller's page; many at once with the <a href="#/import">import</a>.</p>
    <${Table} caption="Controllers (the first 200; the fleet page searches all)" testid="registry"
      head=${["Controller", "MAC", "Site", "Claim code pending"]}
      rows=${(list.data?.items || []).map((c) => html`<tr><th scope="row"><a href="#/controllers/${c.mac}">${c.name}</a></th>
        <td><code>${c.mac}</code></td><td>${c.site || "—"}</td><td>${c.claim_code_pending ? "yes" : "no"}</td></tr>`)}
      empty=${list.loading ? "Loading…" : "No controller yet."} />
    <${Problem} error=${list.error} />
  </section>`;
}

const blankPoint = () => ({ key: "", label: "", unit: "", offset: 0, encoding: "int16", byte_order: "big", decimals: 0 });

function spec(t) {
  return {
    frame_format: t.frame_format || null, verify_crc: Boolean(t.verify_crc),
    modbus_address: t.modbus_address ?? null, modbus_function: t.modbus_function ?? null,
    modbus_register: t.modbus_register ?? null, modbus_register_count: t.modbus_register_count ?? null,
    datapoints: t.datapoints.map((p) => (p.field
      ? { key: p.key, label: p.label, unit: p.unit || null, field: p.field }
      : { key: p.key, label: p.label, unit: p.unit || null, offset: Number(p.offset), encoding: p.encoding,
          byte_order: p.byte_order || "big", decimals: Number(p.decimals || 0) })),
  };
}

function Decoder({ template }) {
  const [frame, setFrame] = useState("");
  const [result, setResult] = useState(null);
  const [error, setError] = useState(null);
  const timer = useRef(null);
  useEffect(() => {
    clearTimeout(timer.current);
    if (!frame.trim() || !template.frame_format) { setResult(null); setError(null); return undefined; }
    timer.current = setTimeout(async () => {
      try { setResult(await post("/v1/decode", { frame, template: spec(template) })); setError(null); }
      catch (e) { setResult(null); setError(e); }
    }, 250);
    return () => clearTimeout(timer.current);
  }, [frame, JSON.stringify(spec(template))]);
  return html`<div class="decoder" data-testid="decoder">
    <${Field} label="Try a frame (hex)" hint="as the sensor's data field, e.g. 01 03 06 08 34 10 68 02 58 14 7F">
      <input class="mono" value=${frame} onInput=${(e) => setFrame(e.target.value)} /><//>
    <${Problem} error=${error} />
    ${result ? (result.ok
      ? html`<ul class="decoded" aria-live="polite">${result.values.map((v) => html`<li><code>${v.key}</code> = <strong>${v.value ?? "NaN"}</strong> ${v.unit || ""}</li>`)}</ul>`
      : html`<p class="problem" role="alert">Dead letter: <code>${result.dead_letter.reason}</code> — ${result.dead_letter.detail}</p>`) : ""}
  </div>`;
}

function TemplateEditor({ me, initial, onSaved }) {
  const [t, setT] = useState(initial);
  const [error, setError] = useState(null);
  const isNew = !initial.id;
  const editable = can(me, "operator");
  useEffect(() => setT(initial), [initial]);
  const setPoint = (i, k) => (e) => setT({ ...t, datapoints: t.datapoints.map((p, j) => (j === i ? { ...p, [k]: e.target.value } : p)) });
  async function save(e) {
    e.preventDefault();
    const body = { ...spec(t), device_type: t.device_type, name: t.name, description: t.description || null };
    try {
      if (isNew) await post("/v1/templates", { ...body, key: t.key });
      else await request("PUT", `/v1/templates/${t.key}`, { body });
      setError(null); onSaved(t.key);
    } catch (err) { setError(err); }
  }
  return html`<form class="card" onSubmit=${save} aria-labelledby="template-title">
    <h2 id="template-title">${isNew ? "New template" : `Template ${t.key}`}</h2>
    <fieldset class="grid" disabled=${!editable}><legend>Template</legend>
      ${isNew ? html`<${Field} label="Key"><input required pattern="[a-z0-9]+(-[a-z0-9]+)*" value=${t.key} onInput=${(e) => setT({ ...t, key: e.target.value })} /><//>` : ""}
      <${Field} label="Name"><input required value=${t.name} onInput=${(e) => setT({ ...t, name: e.target.value })} /><//>
      <${Field} label="Device type (key)"><input required value=${t.device_type} onInput=${(e) => setT({ ...t, device_type: e.target.value })} /><//>
      <${Field} label="Frame format"><select value=${t.frame_format || ""} onChange=${(e) => { const f = e.target.value || null; setT({ ...t, frame_format: f, verify_crc: f === "modbus_rtu" && t.verify_crc }); }}>
        ${options([["", "none (JSON fields)"], "modbus_rtu", "raw"], t.frame_format || "")}</select><//>
      <label class="check"><input type="checkbox" checked=${t.verify_crc} disabled=${t.frame_format !== "modbus_rtu"} onChange=${(e) => setT({ ...t, verify_crc: e.target.checked })} /> Check the Modbus CRC (modbus_rtu only)</label>
    </fieldset>
    <div class="table-wrap"><table><caption>Datapoints</caption>
      <thead><tr>${["Key", "Label", "Unit", "Offset", "Encoding", "Byte order", "Decimals", ""].map((h) => html`<th scope="col">${h}</th>`)}</tr></thead>
      <tbody>${t.datapoints.map((p, i) => html`<tr>
        <td><input aria-label=${`Datapoint ${i + 1} key`} disabled=${!editable} value=${p.key} onInput=${setPoint(i, "key")} /></td>
        <td><input aria-label=${`Datapoint ${i + 1} label`} disabled=${!editable} value=${p.label} onInput=${setPoint(i, "label")} /></td>
        <td><input aria-label=${`Datapoint ${i + 1} unit`} disabled=${!editable} class="short" value=${p.unit || ""} onInput=${setPoint(i, "unit")} /></td>
        ${p.field ? html`<td colspan="4">state field <code>${p.field}</code></td>` : html`
          <td><input aria-label=${`Datapoint ${i + 1} offset`} disabled=${!editable} class="short" type="number" min="0" max="255" value=${p.offset} onInput=${setPoint(i, "offset")} /></td>
          <td><select aria-label=${`Datapoint ${i + 1} encoding`} disabled=${!editable} value=${p.encoding} onChange=${setPoint(i, "encoding")}>${options(ENCODINGS, p.encoding)}</select></td>
          <td><select aria-label=${`Datapoint ${i + 1} byte order`} disabled=${!editable} value=${p.byte_order} onChange=${setPoint(i, "byte_order")}>${options(BYTE_ORDERS, p.byte_order)}</select></td>
          <td><input aria-label=${`Datapoint ${i + 1} decimals`} disabled=${!editable} class="short" type="number" min="0" max="9" value=${p.decimals ?? 0} onInput=${setPoint(i, "decimals")} /></td>`}
        <td>${editable ? html`<button type="button" class="secondary" onClick=${() => setT({ ...t, datapoints: t.datapoints.filter((_, j) => j !== i) })}>Remove</button>` : ""}</td>
      </tr>`)}</tbody></table></div>
    ${editable ? html`<div class="actions"><button type="button" class="secondary" onClick=${() => setT({ ...t, datapoints: [...t.datapoints, blankPoint()] })}>Add datapoint</button>
      <button type="submit">${isNew ? "Create template" : "Save template"}</button></div>` : ""}
    <${Problem} error=${error} />
    <${Decoder} template=${t} />
  </form>`;
}

export function Templates({ me, selected }) {
  const list = useAsync(() => get("/v1/templates", { limit: 1000 }), []);
  const [creating, setCreating] = useState(false);
  const current = (list.data?.items || []).find((t) => t.key === selected);
  const blank = { key: "", name: "", device_type: "", frame_format: "modbus_rtu", verify_crc: false, datapoints: [blankPoint()] };
  return html`<section aria-labelledby="templates-title">
    <h1 id="templates-title">Templates</h1>
    <${Table} caption="How each kind of sensor's frames decode" testid="templates" head=${["Template", "Device type", "Format", "Datapoints", "Devices"]}
      rows=${(list.data?.items || []).map((t) => html`<tr><th scope="row"><a href="#/templates/${t.key}">${t.name}</a><br /><code>${t.key}</code></th>
        <td>${t.device_type}</td><td>${t.frame_format || "JSON fields"}</td><td class="num">${t.datapoints.length}</td><td class="num">${t.devices}</td></tr>`)}
      empty=${list.loading ? "Loading…" : "No template."} />
    <${Problem} error=${list.error} />
    ${can(me, "operator") && !current ? html`<p><button type="button" onClick=${() => setCreating(true)}>New template</button></p>` : ""}
    ${current ? html`<${TemplateEditor} me=${me} initial=${current} onSaved=${() => list.reload()} />`
      : creating ? html`<${TemplateEditor} me=${me} initial=${blank} onSaved=${(key) => { setCreating(false); list.reload(); location.hash = `#/templates/${key}`; }} />` : ""}
  </section>`;
}

export function Import({ me }) {
  const [text, setText] = useState("");
  const [report, setReport] = useState(null);
  const [checked, setChecked] = useState(null);
  const [applied, setApplied] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const json = text.trimStart().startsWith("{") || text.trimStart().startsWith("[");
  async function run(dryRun) {
    setBusy(true); setError(null);
    try {
      const result = await request("POST", "/v1/import", { raw: text, contentType: json ? "application/json" : "text/csv", query: { dry_run: dryRun } });
      if (dryRun) { setReport(result); setChecked(result.valid ? text : null); setApplied(null); }
      else { setApplied(result); setReport(null); setChecked(null); }
    } catch (e) {
      if (e.problem?.errors) setReport({ valid: false, errors: e.problem.errors, errors_total: e.problem.errors.length });
      setError(e);
    } finally { setBusy(false); }
  }
  async function load(e) { const file = e.target.files[0]; if (file) { setText(await file.text()); setReport(null); setChecked(null); } }
  const counts = (c) => (c ? `${c.created} new, ${c.changed} changed, ${c.unchanged} unchanged` : "");
  if (!can(me, "operator")) return html`<section><h1>Import</h1><p>Importing needs the operator role.</p></section>`;
  return html`<section aria-labelledby="import-title">
    <h1 id="import-title">Import a fleet</h1>
    <p>One CSV row per pin: <code>mac,name,site,notes,connector,mode,component,template,device_name</code>
      (or the JSON of an export). Check first: nothing changes until you apply a file whose check found no bad row.</p>
    <div class="grid card">
      <${Field} label="File"><input type="file" accept=".csv,.json,text/csv,application/json" onChange=${load} /><//>
      <${Field} label="Or paste it here"><textarea rows="10" class="mono" value=${text}
        onInput=${(e) => { setText(e.target.value); setChecked(null); }}></textarea><//>
      <div class="actions">
        <button type="button" disabled=${busy || !text.trim()} onClick=${() => run(true)}>Check (dry run)</button>
        <button type="button" disabled=${busy || checked !== text} onClick=${() => run(false)}
          title="enabled after a check found no bad row">Apply</button>
      </div>
    </div>
    <${Problem} error=${error} />
    ${report ? html`<div class="card" data-testid="import-report" aria-live="polite">
      <h2>${report.valid ? "The file is valid: nothing changed yet" : `${report.errors_total} bad row(s): nothing was changed`}</h2>
      ${report.valid ? html`<p>Apply would make controllers: ${counts(report.controllers)}; connectors: ${counts(report.connectors)}; pins: ${counts(report.pins)}.</p>` : ""}
      ${report.errors.length ? html`<${Table} caption="Bad rows" testid="import-errors" head=${["Line", "Column", "Reason", "Detail"]}
        rows=${report.errors.map((r) => html`<tr data-line=${r.line}><th scope="row">${r.line ?? "—"}</th><td>${r.loc.join(".")}</td>
          <td><code>${r.reason}</code></td><td>${r.detail}</td></tr>`)} />` : ""}
    </div>` : ""}
    ${applied ? html`<div class="card" data-testid="import-applied" role="status">
      <h2>Applied</h2>
      <p>Controllers: ${counts(applied.controllers)}; connectors: ${counts(applied.connectors)}; pins: ${counts(applied.pins)}.</p>
      ${applied.claim_codes_csv ? html`<div class="once"><p>The new controllers' claim codes, shown this once: keep them.</p>
        <pre data-testid="claim-codes">${applied.claim_codes_csv}</pre><${CopyButton} text=${applied.claim_codes_csv} label="Copy claim codes" /></div>`
        : html`<p>No new controller: no claim code.</p>`}
    </div>` : ""}
  </section>`;
}
