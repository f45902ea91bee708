// Dead letters (why a controller's data is missing) and the audit log (who changed what),
// each a filterable table read from the api.
import { useState } from "./vendor/htm-preact.js";
import { get } from "./api.js";
import { can, Field, html, Problem, Table, useAsync, when, options } from "./ui.js";

const REASONS = ["bad_topic", "oversize", "bad_batch", "invalid_json", "schema_violation", "unknown_mac",
  "unmapped_connector", "unmapped_position", "bad_hex", "short_frame", "crc_mismatch", "bad_frame",
  "timestamp_implausible", "invalid_record", "constraint_violation", "unproducible"];
const STAGES = ["bridge", "processor", "sink"];

export function DeadLetters() {
  const [filter, setFilter] = useState({ mac: "", reason: "", stage: "" });
  const [applied, setApplied] = useState(filter);
  const page = useAsync(() => get("/v1/dead-letters", { ...applied, mac: applied.mac.replace(/[:-]/g, "").toLowerCase(), limit: 200 }), [JSON.stringify(applied)]);
  const set = (k) => (e) => setFilter({ ...filter, [k]: e.target.value });
  return html`<section aria-labelledby="dl-title">
    <h1 id="dl-title">Dead letters</h1>
    <p>What the pipeline could not store, and why: the newest first.</p>
    <form class="filters" onSubmit=${(e) => { e.preventDefault(); setApplied(filter); }}>
      <${Field} label="Controller MAC"><input value=${filter.mac} onInput=${set("mac")} /><//>
      <${Field} label="Reason"><select value=${filter.reason} onChange=${set("reason")}>
        ${options([["", "any"], ...REASONS], filter.reason)}</select><//>
      <${Field} label="Stage"><select value=${filter.stage} onChange=${set("stage")}>
        ${options([["", "any"], ...STAGES], filter.stage)}</select><//>
      <div class="actions"><button type="submit">Filter</button></div>
    </form>
    <${Problem} error=${page.error} />
    ${page.data ? html`<p class="hint">${page.data.scanned} records scanned${page.data.complete ? "" : " (the deadline came first)"}.</p>` : ""}
    <${Table} caption="Dead letters" testid="dead-letters" head=${["When", "Stage", "Reason", "Controller", "Detail", "Payload"]}
      rows=${(page.data?.items || []).map((d) => html`<tr>
        <td>${when(d.failed_at)}</td><td>${d.stage}</td><td><code>${d.reason}</code></td>
        <td>${d.mac ? html`<a href="#/controllers/${d.mac}">${d.mac}</a>` : "—"}</td><td>${d.detail}</td>
        <td><code class="preview">${d.preview_text}</code>${d.truncated ? ` … (${d.size} bytes)` : ""}</td></tr>`)}
      empty=${page.loading ? "Loading…" : "No dead letter matches."} />
  </section>`;
}

export function Audit({ me }) {
  const [filter, setFilter] = useState({ target: "", actor: "" });
  const [applied, setApplied] = useState(filter);
  const page = useAsync(() => (can(me, "admin") ? get("/v1/audit", { ...applied, limit: 200 }) : Promise.resolve(null)), [JSON.stringify(applied)]);
  if (!can(me, "admin")) return html`<section><h1>Audit log</h1><p>The audit log needs the admin role.</p></section>`;
  const set = (k) => (e) => setFilter({ ...filter, [k]: e.target.value });
  return html`<section aria-labelledby="audit-title">
    <h1 id="audit-title">Audit log</h1>
    <form class="filters" onSubmit=${(e) => { e.preventDefault(); setApplied(filter); }}>
      <${Field} label="Target" hint="e.g. controller:aabbccddee01"><input value=${filter.target} onInput=${set("target")} /><//>
      <${Field} label="Actor (token name)"><input value=${filter.actor} onInput=${set("actor")} /><//>
      <div class="actions"><button type="submit">Filter</button></div>
    </form>
    <${Problem} error=${page.error} />
    <${Table} caption="Every change, newest first" testid="audit" head=${["When", "Actor", "Action", "Target", "Change"]}
      rows=${(page.data?.items || []).map((a) => html`<tr>
        <td>${when(a.at)}</td><td>${a.actor}</td><td><code>${a.action}</code></td><td><code>${a.target}</code></td>
        <td><details><summary>before / after</summary><pre>${JSON.stringify({ before: a.before, after: a.after }, null, 2)}</pre></details></td></tr>`)}
      empty=${page.loading ? "Loading…" : "Nothing recorded."} />
  </section>`;
}
