/* The console's DOM helpers: elements built from text only (nothing is ever parsed as
 * HTML), times, pauses, tables, and errors shown where they happened. */

export const enc = encodeURIComponent;

/** Asks the router to render the current view again (after a change). */
export const reload = () => window.dispatchEvent(new HashChangeEvent('hashchange'));

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'style') el.style.cssText = v; // through the CSSOM: the CSP refuses style attributes
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = Boolean(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function svg(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

export const when = (iso) => (iso ? new Date(iso).toLocaleString() : '—');
export const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  if (signal) signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

/** A table of `rows` (objects) with the given columns ([title, value of a row]). */
export function table(columns, rows, empty, id) {
  const body = rows.length
    ? rows.map((r) => h('tr', {}, columns.map(([, f]) => h('td', {}, f(r)))))
    : [h('tr', {}, h('td', { colspan: columns.length, class: 'muted' }, empty))];
  return h('table', { id }, h('thead', {}, h('tr', {}, columns.map(([t]) => h('th', {}, t)))), h('tbody', {}, body));
}

/** An error box for `e` (nothing for a sign-out or an abandoned request). */
export function errBox(e, where) {
  if (!e || e.status === 401 || e.name === 'AbortError') return '';
  const code = e.code ? ` (${e.code})` : '';
  return h('div', { class: 'errbox', role: 'alert' }, where ? `${where}: ` : '', e.message, code);
}

/** Shows an API error beside the fields it names (`fields`: name → error element), the
 *  rest in `general`. The API joins several problems with "; ". */
export function showErrors(e, fields, general) {
  for (const el of Object.values(fields)) el.textContent = '';
  general.replaceChildren();
  if (!e) return;
  if (e.status === 401 || e.name === 'AbortError') return;
  const parts = e.code === 'validation_failed' || e.code === 'conflict'
    ? e.message.split('; ') : [e.message];
  const names = Object.keys(fields).sort((a, b) => b.length - a.length);
  const rest = [];
  for (const part of parts) {
    const name = names.find((n) => new RegExp(`\\b${n}\\b`).test(part));
    if (name) fields[name].textContent = (fields[name].textContent + ' ' + part).trim();
    else rest.push(part);
  }
  if (rest.length) general.append(errBox({ status: e.status, code: e.code, message: rest.join('; ') }));
  else general.append(errBox({ status: e.status, code: e.code, message: 'see the fields marked below' }));
}
