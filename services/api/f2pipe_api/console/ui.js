// Small shared pieces of the console: the html tag, time formatting, a problem message, a
// copy button, a status badge, and a hook that keeps "n s ago" texts moving.
import { html, useEffect, useState } from "./vendor/htm-preact.js";

export { html };
export const ROLES = { viewer: 0, operator: 1, admin: 2 };
export const can = (me, role) => me && ROLES[me.role] >= ROLES[role];

export function ago(iso, now = Date.now()) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");

export function useTick(ms = 1000) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => { const t = setInterval(() => setNow(Date.now()), ms); return () => clearInterval(t); }, [ms]);
  return now;
}

export function Problem({ error }) {
  if (!error) return null;
  const reason = error.reason ? html` <code>${error.reason}</code>` : "";
  return html`<p class="problem" role="alert">${error.message}${reason}</p>`;
}

export function Badge({ status }) {
  return html`<span class="badge badge-${status}" data-status=${status}>${status.replace("_", " ")}</span>`;
}

export function CopyButton({ text, label = "Copy" }) {
  const [done, setDone] = useState(false);
  async function copy() {
    try { await navigator.clipboard.writeText(text); setDone(true); }
    catch { setDone(false); }
  }
  return html`<button type="button" class="secondary" onClick=${copy}>${done ? "Copied" : label}</button>`;
}

export function Field({ label, children, hint }) {
  return html`<label class="field"><span>${label}</span>${children}${hint ? html`<small>${hint}</small>` : ""}</label>`;
}

export function Table({ caption, head, rows, empty = "Nothing here.", testid }) {
  return html`<div class="table-wrap"><table data-testid=${testid}>
    <caption>${caption}</caption>
    <thead><tr>${head.map((h) => html`<th scope="col">${h}</th>`)}</tr></thead>
    <tbody>${rows.length ? rows : html`<tr><td colspan=${head.length}>${empty}</td></tr>`}</tbody>
  </table></div>`;
}

export function useAsync(load, deps) {
  const [state, setState] = useState({ loading: true, data: null, error: null });
  const [version, setVersion] = useState(0);
  useEffect(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    load().then((data) => live && setState({ loading: false, data, error: null }),
                (error) => live && setState({ loading: false, data: null, error }));
    return () => { live = false; };
  }, [...deps, version]);
  return { ...state, reload: () => setVersion((v) => v + 1) };
}

// <option>s with `selected` set: a <select>'s value given before its options exist is lost.
export function options(items, value) {
  return items.map((item) => {
    const [v, label] = Array.isArray(item) ? item : [item, item];
    return html`<option value=${v} selected=${String(v) === String(value)}>${label}</option>`;
  });
}
