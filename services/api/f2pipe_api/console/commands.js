// Commands: an operator sends a strike, siren or reader command, or asks for a state report;
// each command's status (queued → sent → confirmed | timed out | failed) follows live from the
// stream's `command` frames. Viewers see the history and no send controls (the api refuses
// them a 403 anyway).
import { useEffect, useState } from "./vendor/htm-preact.js";
import { get, post, stream } from "./api.js";
import { Badge, can, Field, html, Problem, Table, when, options } from "./ui.js";

const JS = ["J1", "J2", "J3", "J4"];
const COMPONENTS = ["strike-1", "strike-2", "siren-1", "siren-2", "reader-1", "reader-2"];
const ACTIONS = {
  strike: [["on", "Power on"], ["off", "Power off"], ["toggle", "Toggle for N seconds"], ["report", "Report your state"]],
  siren: [["on", "Siren on"], ["off", "Siren off"], ["report", "Report your state"]],
  reader: [["1", "Feedback: success"], ["2", "Feedback: failure"], ["3", "Feedback: failure (other)"]],
};

function payload(kind, action, period) {
  if (action === "report") return null;
  if (kind === "strike") {
    if (action === "toggle") return { "power-flag": 2, period: Number(period) };
    return { "power-flag": action === "on" ? 1 : 0 };
  }
  if (kind === "siren") return action === "on" ? 1 : 0;
  return Number(action);
}

function describe(c) {
  if (c.payload === null) return "report your state";
  if (typeof c.payload === "object") {
    const flag = c.payload["power-flag"];
    return flag === 2 ? `toggle for ${c.payload.period} s` : flag === 1 ? "power on" : "power off";
  }
  if (c.component.startsWith("siren")) return c.payload ? "siren on" : "siren off";
  return `feedback ${c.payload}`;
}

export function Commands({ me, mac }) {
  const [items, setItems] = useState([]);
  const [error, setError] = useState(null);
  const [form, setForm] = useState({ connector: "J1", component: "strike-1", action: "toggle", period: "5" });
  const kind = form.component.split("-")[0];
  const merge = (command) => setItems((list) => {
    const rest = list.filter((c) => c.id !== command.id);
    return [{ ...(list.find((c) => c.id === command.id) || {}), ...command }, ...rest]
      .sort((a, b) => b.id - a.id).slice(0, 50);
  });
  useEffect(() => {
    get(`/v1/controllers/${mac}/commands`, { limit: 20 }).then((page) => setItems(page.items), setError);
    return stream((event, frame) => { if (event === "command") merge({ ...frame, mac }); }, { macs: [mac] });
  }, [mac]);
  async function send(e) {
    e.preventDefault();
    try {
      const body = { connector: form.connector, component: form.component, payload: payload(kind, form.action, form.period) };
      merge(await post(`/v1/controllers/${mac}/commands`, body));
      setError(null);
    } catch (err) { setError(err); }
  }
  const set = (k) => (e) => {
    const next = { ...form, [k]: e.target.value };
    if (k === "component") next.action = ACTIONS[e.target.value.split("-")[0]][0][0];
    setForm(next);
  };
  return html`<section aria-labelledby="commands-title" class="card">
    <h2 id="commands-title">Commands</h2>
    ${can(me, "operator") ? html`<form class="grid" onSubmit=${send} data-testid="command-form">
      <${Field} label="Connector"><select value=${form.connector} onChange=${set("connector")}>
        ${options(JS, form.connector)}</select><//>
      <${Field} label="Component"><select value=${form.component} onChange=${set("component")}>
        ${options(COMPONENTS, form.component)}</select><//>
      <${Field} label="Action"><select value=${form.action} onChange=${set("action")}>
        ${options(ACTIONS[kind], form.action)}</select><//>
      ${kind === "strike" && form.action === "toggle" ? html`<${Field} label="Seconds (0–255)">
        <input type="number" min="0" max="255" required value=${form.period} onInput=${set("period")} /><//>` : ""}
      <div class="actions"><button type="submit">Send command</button></div>
    </form>` : html`<p class="hint">Your role (${me.role}) may read commands, not send them.</p>`}
    <${Problem} error=${error} />
    <${Table} caption="This controller's commands, newest first" testid="commands"
      head=${["#", "What", "Status", "Sent by", "When"]}
      rows=${items.map((c) => html`<tr data-command=${c.id} data-status=${c.status}>
        <th scope="row">${c.id}</th><td>${c.connector} ${c.component}: ${describe(c)}</td>
        <td><${Badge} status=${c.status} />${c.reverted_at ? " (reverted)" : ""}${c.detail ? html`<br /><small>${c.detail}</small>` : ""}</td>
        <td>${c.actor}</td><td>${when(c.created_at)}</td></tr>`)} empty="No command yet." />
  </section>`;
}
