/* chatfleet operator console: one framework-free page over the admin API (/admin/v1).
 *
 * Everything it shows from the API goes into the page as text nodes (h() below never
 * parses HTML), so a message that contains markup is shown as the text it is. The
 * operator's token is kept in sessionStorage for the tab's life; a 401 anywhere returns
 * to sign-in. Errors are shown where the action was taken: beside the field the API
 * named, or in the card whose action failed; the page is never left blank.
 *
 * Views (the part of the URL after #): /tenants, /tenants/<slug>/<tab>,
 * /tenants/<slug>/conversations/<id>, /inbox, /replay.
 */
'use strict';

const TOKEN_KEY = 'chatfleet.console.token';
const S = { token: sessionStorage.getItem(TOKEN_KEY) || '', me: null, live: null };
const mainEl = document.getElementById('main');
const enc = encodeURIComponent;

// ---- DOM, text only -------------------------------------------------------------

function h(tag, props, ...children) {
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

function svg(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : '—');
const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  if (signal) signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

// ---- The admin API ------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body, signal) {
  const headers = { Authorization: `Bearer ${S.token}` };
  const init = { method, headers, signal };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'unreachable', `The ingress did not answer (${e.message}).`);
  }
  const text = await r.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (_) { data = null; }
  }
  if (r.status === 401) {
    signOut('Your token was refused (expired, revoked or mistyped): sign in again.');
    throw new ApiError(401, 'unauthorized', 'signed out');
  }
  if (!r.ok) {
    const e = data && data.error;
    throw new ApiError(r.status, e ? e.code : `http_${r.status}`,
      e ? e.message : (text || r.statusText || `HTTP ${r.status}`));
  }
  return data;
}

/** An error box for `e` (nothing for a sign-out or an abandoned request). */
function errBox(e, where) {
  if (!e || e.status === 401 || e.name === 'AbortError') return '';
  const code = e.code ? ` (${e.code})` : '';
  return h('div', { class: 'errbox', role: 'alert' }, where ? `${where}: ` : '', e.message, code);
}

/** Shows an API error beside the fields it names (`fields`: name → error element), the
 *  rest in `general`. The API joins several problems with "; ". */
function showErrors(e, fields, general) {
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
  if (rest.length) general.append(errBox(new ApiError(e.status, e.code, rest.join('; '))));
  else general.append(errBox(new ApiError(e.status, e.code, 'see the fields marked below')));
}

// ---- Sign-in and routing ------------------------------------------------------------------

function signIn(message) {
  S.me = null;
  document.getElementById('nav').hidden = true;
  document.getElementById('who').replaceChildren();
  const token = h('input', { type: 'password', id: 'token', placeholder: 'operator token', autocomplete: 'off' });
  const err = h('div', { class: 'err', id: 'signin-error' }, message || '');
  const form = h('form', { class: 'card signin', id: 'signin' },
    h('h1', {}, 'Sign in'),
    h('p', { class: 'muted' }, 'An operator token (chatfleet admin-token create) or the bootstrap admin.token.'),
    token, err, h('button', { type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    S.token = token.value.trim();
    if (!S.token) { err.textContent = 'Enter a token.'; return; }
    try {
      S.me = await api('GET', '/admin/v1/whoami');
    } catch (e) {
      if (e.status !== 401) err.textContent = e.message;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, S.token);
    showWho();
    if (!location.hash || location.hash === '#/') location.hash = '#/tenants';
    else route();
  });
  mainEl.replaceChildren(form);
  token.focus();
}

function signOut(message) {
  if (S.live) S.live.abort();
  S.token = '';
  S.me = null;
  sessionStorage.removeItem(TOKEN_KEY);
  signIn(message);
}

function showWho() {
  document.getElementById('nav').hidden = false;
  const scope = S.me.scope === 'read'
    ? h('span', { class: 'badge read', title: 'changes are refused' }, 'read only') : '';
  document.getElementById('who').replaceChildren(
    h('span', { id: 'operator' }, S.me.name), scope,
    h('button', { type: 'button', onclick: () => signOut('Signed out.') }, 'Sign out'));
}

async function route() {
  if (S.live) S.live.abort();
  if (!S.token) return signIn();
  if (!S.me) {
    try { S.me = await api('GET', '/admin/v1/whoami'); } catch (e) {
      if (e.status !== 401) signIn(e.message);
      return;
    }
    showWho();
  }
  const live = new AbortController();
  S.live = live;
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('on', a.getAttribute('href') === `#/${parts[0] || 'tenants'}`);
  }
  // Each view renders into a root of its own: one still loading when the operator moved
  // on renders into a root no longer shown.
  const root = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  mainEl.replaceChildren(root);
  try {
    if (parts[0] === 'inbox') await inboxView(root, live.signal);
    else if (parts[0] === 'replay') await replayView(root);
    else if (parts[0] === 'tenants' && parts[1] && parts[2] === 'conversations' && parts[3]) {
      await conversationView(root, parts[1], parts[3], live.signal);
    } else if (parts[0] === 'tenants' && parts[1]) await tenantView(root, parts[1], parts[2] || 'config', live.signal);
    else await tenantsView(root);
  } catch (e) {
    if (e.name === 'AbortError' || e.status === 401 || live.signal.aborted) return;
    root.replaceChildren(errBox(e), h('p', {}, h('a', { href: '#/tenants' }, 'Back to the tenants')));
  }
}

// ---- Tenants ------------------------------------------------------------------

async function allTenants() {
  const all = [];
  let after = 0;
  for (;;) {
    const page = await api('GET', `/admin/v1/clients?limit=200&after=${after}`);
    all.push(...page.clients);
    if (!page.next_after) return all;
    after = page.next_after;
  }
}

async function tenantsView(root) {
  const tenants = await allTenants();
  const search = h('input', { type: 'search', id: 'tenant-search', class: 'grow', placeholder: 'Search by name or slug' });
  const rows = h('tbody');
  const fill = () => {
    const q = search.value.trim().toLowerCase();
    const shown = tenants.filter((c) => !q || c.slug.includes(q) || c.name.toLowerCase().includes(q));
    rows.replaceChildren(...shown.map((c) => h('tr', { class: 'link', 'data-slug': c.slug, onclick: () => { location.hash = `#/tenants/${enc(c.slug)}`; } },
      h('td', {}, h('a', { href: `#/tenants/${enc(c.slug)}` }, c.name)), h('td', {}, c.slug),
      h('td', {}, c.plan), h('td', {}, c.status), h('td', {}, when(c.created_at)))));
    if (!shown.length) rows.append(h('tr', {}, h('td', { colspan: 5, class: 'muted' }, q ? 'No tenant matches.' : 'No tenants yet.')));
  };
  search.addEventListener('input', fill);
  fill();

  const slug = h('input', { id: 'new-slug', placeholder: 'acme-shop' });
  const name = h('input', { id: 'new-name', placeholder: 'Acme Shop' });
  const errs = { slug: h('div', { class: 'err' }), name: h('div', { class: 'err' }) };
  const general = h('div');
  const create = h('form', { class: 'card', id: 'new-tenant' },
    h('h2', {}, 'New tenant'),
    h('div', { class: 'field' }, h('label', { for: 'new-slug' }, 'Slug'), h('div', {}, slug, errs.slug)),
    h('div', { class: 'field' }, h('label', { for: 'new-name' }, 'Name'), h('div', {}, name, errs.name)),
    general, h('button', { type: 'submit' }, 'Create'));
  create.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const made = await api('POST', '/admin/v1/clients', { slug: slug.value.trim(), name: name.value.trim() });
      location.hash = `#/tenants/${enc(made.slug)}/config`;
    } catch (e) { showErrors(e, errs, general); }
  });
  root.replaceChildren(h('h1', {}, 'Tenants'), h('div', { class: 'row' }, search),
    h('table', { id: 'tenants' }, h('thead', {}, h('tr', {}, ['Name', 'Slug', 'Plan', 'Status', 'Created'].map((t) => h('th', {}, t)))), rows),
    h('div', { style: 'height:14px' }), create);
}

const TABS = [['config', 'Configuration'], ['modes', 'Agent modes'], ['conversations', 'Conversations'],
  ['channels', 'Channels'], ['keys', 'API keys'], ['knowledge', 'Knowledge'], ['tools', 'Tools'],
  ['webhooks', 'Webhooks'], ['usage', 'Usage']];

async function tenantView(root, slug, tab, signal) {
  const client = await api('GET', `/admin/v1/clients/${enc(slug)}`);
  const pane = h('div', { id: `tab-${tab}` });
  root.replaceChildren(
    h('h1', {}, client.name, ' ', h('span', { class: 'badge' }, client.slug), ' ', h('span', { class: 'badge' }, client.status)),
    h('div', { class: 'tabs' }, TABS.map(([k, label]) => h('a', { href: `#/tenants/${enc(slug)}/${k}`, class: k === tab ? 'on' : '' }, label))),
    pane);
  const base = `/admin/v1/clients/${enc(slug)}`;
  const views = { config: configTab, modes: modesTab, conversations: conversationsTab, channels: channelsTab,
    keys: keysTab, knowledge: knowledgeTab, tools: toolsTab, webhooks: webhooksTab, usage: usageTab };
  await (views[tab] || configTab)(pane, base, signal);
}

// The fields of a tenant's configuration the page edits: name, kind, label, options.
const CONFIG_FIELDS = [
  ['persona_name', 'text', 'Persona name'],
  ['persona_tone', 'select', 'Tone', ['friendly', 'professional', 'formal', 'casual', 'empathetic', 'playful', 'concise']],
  ['persona_language', 'text', 'Language'],
  ['llm_model', 'text', 'Model'],
  ['llm_temperature', 'number', 'Temperature'],
  ['llm_max_output_tokens', 'int', 'Max output tokens'],
  ['max_context_turns', 'int', 'History length (turns)'],
  ['rag_top_k', 'int', 'Knowledge top-k'],
  ['human_handoff_phrase', 'text?', 'Handoff phrase'],
  ['handoff_message', 'textarea', 'Handoff message'],
  ['fallback_message', 'textarea', 'Fallback message'],
  ['fallback_model', 'text?', 'Fallback model'],
  ['prompt_token_budget', 'int?', 'Prompt token budget'],
  ['coalesce_window_ms', 'int', 'Coalesce window (ms)'],
  ['builtin_tools', 'list', 'Built-in tools', 'comma-separated: handoff_to_human, offer_choices'],
  ['whatsapp_typing_indicator', 'bool', 'WhatsApp typing indicator'],
  ['transcribe_audio', 'bool', 'Transcribe voice notes'],
  ['llm_vision', 'bool', 'Model sees images'],
  ['media_fallback_message', 'textarea', 'Media fallback message'],
  ['budget_monthly', 'number?', 'Monthly budget'],
  ['budget_warning_pct', 'int', 'Budget warning (%)'],
  ['budget_action', 'select', 'Over budget', ['fallback_model', 'fallback_message', 'handoff', 'none']],
  ['fallback_to_platform_key', 'bool', 'Fall back to the platform key'],
  ['redact_pii', 'bool', 'Redact personal data'],
  ['retention_days', 'int?', 'Retention (days)'],
];

function inputFor(name, kind, value, options) {
  const id = `f-${name}`;
  if (kind === 'select') return h('select', { id, name }, options.map((o) => h('option', { value: o, selected: o === value }, o)));
  if (kind === 'bool') return h('input', { id, name, type: 'checkbox', checked: value });
  if (kind === 'textarea') return h('textarea', { id, name }, value || '');
  if (kind === 'list') return h('input', { id, name, value: (value || []).join(', ') });
  const numeric = kind.startsWith('int') || kind.startsWith('number');
  return h('input', { id, name, type: numeric ? 'number' : 'text', step: kind.startsWith('number') ? 'any' : null, value: value === null || value === undefined ? '' : value });
}

function valueOf(el, kind) {
  if (kind === 'bool') return el.checked;
  if (kind === 'list') return el.value.split(',').map((s) => s.trim()).filter(Boolean);
  const raw = el.value.trim();
  const nullable = kind.endsWith('?');
  if (raw === '' && nullable) return null;
  if (kind.startsWith('int') || kind.startsWith('number')) return raw === '' ? null : Number(raw);
  return el.value;
}

async function configTab(pane, base) {
  let config = await api('GET', `${base}/config`);
  const inputs = {};
  const errs = {};
  const version = h('span', { id: 'config-version', class: 'badge' }, `config version ${config.config_version}`);
  const fields = CONFIG_FIELDS.map(([name, kind, label, extra]) => {
    inputs[name] = inputFor(name, kind, config[name], Array.isArray(extra) ? extra : null);
    errs[name] = h('div', { class: 'err', id: `err-${name}` });
    return h('div', { class: 'field' }, h('label', { for: `f-${name}` }, label),
      h('div', {}, inputs[name], typeof extra === 'string' ? h('div', { class: 'hint' }, extra) : '', errs[name]));
  });
  const general = h('div', { id: 'config-result' });
  const form = h('form', { class: 'card', id: 'config-form' }, h('div', { class: 'row' }, h('h2', { class: 'grow' }, 'Configuration'), version),
    fields, general, h('button', { type: 'submit', id: 'config-save' }, 'Save'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const patch = {};
    for (const [name, kind] of CONFIG_FIELDS) {
      const v = valueOf(inputs[name], kind);
      if (JSON.stringify(v) !== JSON.stringify(config[name] === undefined ? null : config[name])) patch[name] = v;
    }
    if (!Object.keys(patch).length) {
      showErrors(null, errs, general);
      general.append(h('div', { class: 'okbox' }, 'Nothing changed.'));
      return;
    }
    try {
      config = await api('PATCH', `${base}/config`, patch);
      showErrors(null, errs, general);
      version.textContent = `config version ${config.config_version}`;
      general.append(h('div', { class: 'okbox' }, `Saved: the bot answers with config version ${config.config_version} from its next turn.`));
    } catch (e) { showErrors(e, errs, general); }
  });
  pane.replaceChildren(form);
}

async function modesTab(pane, base) {
  const modes = await api('GET', `${base}/modes`);
  const list = h('div');
  for (const m of modes) {
    const fragment = h('textarea', {}, m.prompt_fragment);
    const priority = h('input', { type: 'number', value: m.priority, style: 'width:90px' });
    const active = h('input', { type: 'checkbox', checked: m.is_active });
    const result = h('div');
    const save = async () => {
      try {
        await api('PATCH', `${base}/modes/${enc(m.module_key)}`, { prompt_fragment: fragment.value, priority: Number(priority.value), is_active: active.checked });
        result.replaceChildren(h('div', { class: 'okbox' }, 'Saved.'));
      } catch (e) { result.replaceChildren(errBox(e)); }
    };
    const remove = async () => {
      if (!confirm(`Delete the mode ${m.module_key}?`)) return;
      try { await api('DELETE', `${base}/modes/${enc(m.module_key)}`); route(); } catch (e) { result.replaceChildren(errBox(e)); }
    };
    list.append(h('div', { class: 'card mode', 'data-key': m.module_key }, h('div', { class: 'row' }, h('strong', { class: 'grow' }, m.module_key),
      h('label', {}, 'priority '), priority, h('label', {}, active, ' active')), fragment, result,
    h('div', { class: 'row' }, h('button', { type: 'button', class: 'save', onclick: save }, 'Save'), h('button', { type: 'button', class: 'danger', onclick: remove }, 'Delete'))));
  }
  if (!modes.length) list.append(h('p', { class: 'muted' }, 'No agent modes.'));
  const key = h('input', { id: 'new-mode-key', placeholder: 'module_key' });
  const fragment = h('textarea', { id: 'new-mode-fragment', placeholder: 'prompt fragment' });
  const priority = h('input', { type: 'number', value: 100, style: 'width:90px' });
  const errs = { module_key: h('div', { class: 'err' }), prompt_fragment: h('div', { class: 'err' }), priority: h('div', { class: 'err' }) };
  const general = h('div');
  const add = h('form', { class: 'card', id: 'new-mode' }, h('h2', {}, 'New mode'), h('div', { class: 'row' }, key, h('label', {}, 'priority'), priority), errs.module_key, errs.priority,
    fragment, errs.prompt_fragment, general, h('button', { type: 'submit' }, 'Add'));
  add.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await api('POST', `${base}/modes`, { module_key: key.value.trim(), prompt_fragment: fragment.value, priority: Number(priority.value), is_active: true });
      route();
    } catch (e) { showErrors(e, errs, general); }
  });
  pane.replaceChildren(list, add);
}

/** A table of `rows` (objects) with the given columns ([title, value of a row]). */
function table(columns, rows, empty, id) {
  const body = rows.length
    ? rows.map((r) => h('tr', {}, columns.map(([, f]) => h('td', {}, f(r)))))
    : [h('tr', {}, h('td', { colspan: columns.length, class: 'muted' }, empty))];
  return h('table', { id }, h('thead', {}, h('tr', {}, columns.map(([t]) => h('th', {}, t)))), h('tbody', {}, body));
}

async function channelsTab(pane, base) {
  const accounts = await api('GET', `${base}/channels`);
  pane.replaceChildren(h('div', { class: 'card' }, h('h2', {}, 'Channel accounts'),
    table([['Id', (a) => a.id], ['Channel', (a) => a.channel], ['Account', (a) => a.external_account_id],
      ['Credentials', (a) => (a.has_credentials ? 'set' : '—')], ['Created', (a) => when(a.created_at)]], accounts, 'No channel accounts.', 'channels')));
}

async function keysTab(pane, base) {
  const keys = await api('GET', `${base}/api-keys`);
  const result = h('div', { id: 'key-result' });
  const revoke = (k) => h('button', {
    type: 'button', class: 'danger', disabled: Boolean(k.revoked_at),
    onclick: async () => {
      if (!confirm(`Revoke the key ${k.prefix}…? Callers using it are refused at once.`)) return;
      try { await api('DELETE', `${base}/api-keys/${k.id}`); route(); } catch (e) { result.replaceChildren(errBox(e, 'Revoke')); }
    },
  }, k.revoked_at ? 'Revoked' : 'Revoke');
  const name = h('input', { id: 'key-name', placeholder: 'key name' });
  const errs = { name: h('div', { class: 'err' }) };
  const general = h('div');
  const create = h('form', { class: 'row' }, name, h('button', { type: 'submit', id: 'key-create' }, 'Create key'));
  create.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const made = await api('POST', `${base}/api-keys`, { name: name.value.trim() });
      showErrors(null, errs, general);
      result.replaceChildren(h('p', {}, 'The new key, shown this once: copy it now.'), h('div', { class: 'secret', id: 'new-key' }, made.key));
    } catch (e) { showErrors(e, errs, general); }
  });
  pane.replaceChildren(h('div', { class: 'card' }, h('h2', {}, 'API keys'),
    table([['Name', (k) => k.name], ['Prefix', (k) => k.prefix], ['Created', (k) => when(k.created_at)],
      ['Revoked', (k) => when(k.revoked_at)], ['', revoke]], keys, 'No API keys.', 'api-keys'),
    h('h2', {}, 'New key'), create, errs.name, general, result));
}

async function knowledgeTab(pane, base) {
  const docs = await api('GET', `${base}/knowledge`);
  const result = h('div');
  const remove = (d) => h('button', {
    type: 'button', class: 'danger',
    onclick: async () => {
      if (!confirm(`Delete ${d.title}?`)) return;
      try { await api('DELETE', `${base}/knowledge/${d.id}`); route(); } catch (e) { result.replaceChildren(errBox(e, 'Delete')); }
    },
  }, 'Delete');
  const file = h('input', { type: 'file', id: 'knowledge-file', accept: '.txt,.md,.markdown,text/plain,text/markdown' });
  const title = h('input', { placeholder: 'title (default: the file name)' });
  const upload = h('form', { class: 'row', id: 'knowledge-upload' }, file, title, h('button', { type: 'submit' }, 'Upload'));
  upload.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = file.files[0];
    if (!f) { result.replaceChildren(errBox(new ApiError(0, '', 'Choose a text or markdown file.'))); return; }
    try {
      const content = await f.text();
      await api('POST', `${base}/knowledge`, { title: title.value.trim() || f.name, source: f.name, content });
      route();
    } catch (e) { result.replaceChildren(errBox(e, 'Upload')); }
  });
  pane.replaceChildren(h('div', { class: 'card' }, h('h2', {}, 'Knowledge documents'),
    table([['Title', (d) => d.title], ['Source', (d) => d.source || '—'], ['Chunks', (d) => d.chunk_count],
      ['Added', (d) => when(d.created_at)], ['', remove]], docs, 'No documents.', 'knowledge'),
    h('h2', {}, 'Upload text or markdown'), upload, result));
}

async function toolsTab(pane, base) {
  const tools = await api('GET', `${base}/tools`);
  pane.replaceChildren(h('div', { class: 'card' }, h('h2', {}, 'Tools'),
    table([['Name', (t) => t.name], ['Description', (t) => t.description], ['Call', (t) => `${t.method} ${t.url}`],
      ['Side effects', (t) => (t.side_effects ? 'yes' : 'no')], ['Active', (t) => (t.is_active ? 'yes' : 'no')]], tools, 'No tools.', 'tools')));
}

async function webhooksTab(pane, base) {
  const hooks = await api('GET', `${base}/webhooks`);
  pane.replaceChildren(h('div', { class: 'card' }, h('h2', {}, 'Webhooks'),
    table([['Id', (w) => w.id], ['URL', (w) => w.url], ['Events', (w) => w.events.join(', ')],
      ['Enabled', (w) => (w.enabled ? 'yes' : `no${w.disabled_reason ? `: ${w.disabled_reason}` : ''}`)],
      ['Failing since', (w) => when(w.failing_since)]], hooks, 'No webhooks.', 'webhooks')));
}

/** A bar chart of one series per day. */
function barChart(title, days, value, format) {
  const W = 1100; const H = 170; const pad = 28;
  const max = Math.max(1e-9, ...days.map(value));
  const bw = (W - pad * 2) / Math.max(1, days.length);
  const bars = days.map((d, i) => {
    const v = value(d);
    const bh = ((H - pad * 2) * v) / max;
    return svg('rect', { x: pad + i * bw + 1, y: H - pad - bh, width: Math.max(1, bw - 2), height: bh, fill: '#2458c5' },
      svg('title', {}, `${d.day}: ${format(v)}`));
  });
  const first = days[0] ? days[0].day : '';
  const last = days.length ? days[days.length - 1].day : '';
  return h('div', { class: 'card' }, h('h2', {}, title),
    svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img' },
      svg('text', { x: pad, y: 14, 'font-size': 12, fill: '#7a849a' }, `max ${format(max)}`),
      ...bars,
      svg('text', { x: pad, y: H - 8, 'font-size': 12, fill: '#7a849a' }, first),
      svg('text', { x: W - pad, y: H - 8, 'font-size': 12, fill: '#7a849a', 'text-anchor': 'end' }, last)));
}

/** YYYY-MM-DD of a date (its UTC day). */
const isoDay = (d) => d.toISOString().slice(0, 10);

async function usageTab(pane, base) {
  const DAYS = 30;
  const to = new Date();
  const from = new Date(to.getTime() - (DAYS - 1) * 86400e3);
  const usage = await api('GET', `${base}/usage?from=${isoDay(from)}&to=${isoDay(to)}`);
  // Every day of the range, those without traffic as zeros.
  const byDay = new Map(usage.days.map((d) => [d.day, d]));
  const days = [];
  for (let i = 0; i < DAYS; i += 1) {
    const day = isoDay(new Date(from.getTime() + i * 86400e3));
    days.push(byDay.get(day) || { day, messages: 0, prompt_tokens: 0, completion_tokens: 0, cost: 0 });
  }
  const money = (v) => `${v.toFixed(4)}${usage.currency ? ` ${usage.currency}` : ''}`;
  const m = usage.month;
  pane.replaceChildren(
    h('div', { class: 'card' }, h('h2', {}, 'This month'),
      h('p', {}, `${m.month}: spent ${money(m.spent)}`, m.budget_monthly !== null ? ` of ${money(m.budget_monthly)}` : ' (no budget)',
        m.over_budget ? h('span', { class: 'badge human' }, ' over budget') : ''),
      h('p', { class: 'muted' }, `Last ${DAYS} days: ${usage.total.messages} messages, `
        + `${usage.total.prompt_tokens + usage.total.completion_tokens} tokens, ${money(usage.total.cost)}.`)),
    barChart('Messages per day', days, (d) => d.messages, (v) => String(Math.round(v))),
    barChart('Tokens per day', days, (d) => d.prompt_tokens + d.completion_tokens, (v) => String(Math.round(v))),
    barChart('Cost per day', days, (d) => d.cost, money));
}

// ---- Conversations ------------------------------------------------------------

async function conversationsTab(pane, base) {
  const channel = h('select', { id: 'filter-channel' }, ['', 'api', 'widget', 'mobile', 'whatsapp'].map((c) => h('option', { value: c }, c || 'every channel')));
  const mode = h('select', { id: 'filter-mode' }, ['', 'bot', 'human'].map((c) => h('option', { value: c }, c || 'every mode')));
  const rows = h('tbody');
  const more = h('button', { type: 'button', class: 'quiet', hidden: true }, 'Older');
  const result = h('div');
  const slug = base.split('/').pop();
  let before = null;
  const load = async (append) => {
    const q = new URLSearchParams({ order: 'newest', limit: '50' });
    if (channel.value) q.set('channel', channel.value);
    if (mode.value) q.set('mode', mode.value);
    if (append && before) q.set('before', before);
    try {
      const page = await api('GET', `${base}/conversations?${q}`);
      if (!append) rows.replaceChildren();
      for (const c of page.conversations) {
        const href = `#/tenants/${slug}/conversations/${c.id}`;
        rows.append(h('tr', { class: 'link', 'data-id': c.id, onclick: () => { location.hash = href; } },
          h('td', {}, h('a', { href }, c.id)), h('td', {}, c.channel), h('td', {}, c.external_id),
          h('td', {}, h('span', { class: `badge ${c.mode}` }, c.mode)), h('td', {}, when(c.last_message_at)), h('td', {}, when(c.created_at))));
      }
      if (!rows.children.length) rows.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No conversations.')));
      before = page.next_before;
      more.hidden = !before;
      result.replaceChildren();
    } catch (e) { result.replaceChildren(errBox(e)); }
  };
  channel.addEventListener('change', () => load(false));
  mode.addEventListener('change', () => load(false));
  more.addEventListener('click', () => load(true));
  pane.replaceChildren(h('div', { class: 'row' }, channel, mode), result,
    h('table', { id: 'conversations' }, h('thead', {}, h('tr', {}, ['Id', 'Channel', 'Conversation', 'Mode', 'Last message', 'Started'].map((t) => h('th', {}, t)))), rows),
    h('div', { class: 'row', style: 'margin-top:8px' }, more));
  await load(false);
}

function messageView(m) {
  const facts = [m.role, when(m.created_at)];
  if (m.role === 'user') facts.push(m.state);
  else if (m.delivery_status) facts.push(m.delivery_status);
  if (m.prompt_tokens !== null && m.prompt_tokens !== undefined) facts.push(`${m.prompt_tokens} + ${m.completion_tokens} tokens`);
  if (m.config_version) facts.push(`config v${m.config_version}`);
  if (m.reply_kind && m.reply_kind !== 'bot' && m.reply_kind !== m.role) facts.push(m.reply_kind);
  return h('div', { class: `msg ${m.role}`, 'data-id': m.id },
    h('span', { class: 'text' }, m.content),
    m.choices && m.choices.length ? h('span', { class: 'meta' }, `choices: ${m.choices.join(' · ')}`) : '',
    h('span', { class: 'meta' }, facts.join(' · ')));
}

async function conversationView(root, slug, id, signal) {
  const base = `/admin/v1/clients/${enc(slug)}/conversations/${enc(id)}`;
  const title = h('h1', {});
  const modeBadge = h('span', { class: 'badge', id: 'conversation-mode' });
  const toggle = h('button', { type: 'button', id: 'mode-toggle', class: 'quiet' });
  const msgs = h('div', { class: 'msgs', id: 'messages' });
  const status = h('div', { id: 'live-status' });
  const text = h('textarea', { id: 'agent-text', placeholder: 'Reply as the agent…' });
  const send = h('button', { type: 'submit', id: 'agent-send' }, 'Send');
  const result = h('div', { id: 'agent-result' });
  const compose = h('form', { class: 'compose' }, text, send);
  let detail = null;
  let lastSeq = 0;

  const render = (d) => {
    detail = d;
    title.replaceChildren(`Conversation ${d.id} `, h('span', { class: 'badge' }, d.channel), ' ', modeBadge);
    modeBadge.textContent = d.mode === 'human' ? 'a human answers' : 'the bot answers';
    modeBadge.className = `badge ${d.mode}`;
    toggle.textContent = d.mode === 'human' ? 'Hand back to the bot' : 'Take over';
    const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    msgs.replaceChildren(...d.messages.map(messageView));
    if (!d.messages.length) msgs.append(h('p', { class: 'muted' }, 'No messages yet.'));
    lastSeq = d.messages.reduce((s, m) => Math.max(s, m.seq || 0), 0);
    if (atBottom) window.scrollTo(0, document.body.scrollHeight);
  };
  const refresh = async () => render(await api('GET', base, undefined, signal));

  toggle.addEventListener('click', async () => {
    const action = detail && detail.mode === 'human' ? 'resume' : 'handoff';
    try { await api('POST', `${base}/${action}`); result.replaceChildren(); await refresh(); } catch (e) { result.replaceChildren(errBox(e, action === 'resume' ? 'Hand back' : 'Take over')); }
  });
  compose.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!text.value.trim()) return;
    send.disabled = true;
    try {
      await api('POST', `${base}/messages`, { text: text.value });
      text.value = '';
      result.replaceChildren();
      await refresh();
    } catch (e) { result.replaceChildren(errBox(e, 'Send')); } finally { send.disabled = false; }
  });

  root.replaceChildren(h('p', {}, h('a', { href: `#/tenants/${enc(slug)}/conversations` }, '← conversations'), ' · ', h('a', { href: '#/inbox' }, 'handoff inbox')),
    h('div', { class: 'row' }, h('div', { class: 'grow' }, title), toggle), status, h('div', { class: 'card' }, msgs), compose, result);
  await refresh();
  // Live: each request waits (up to 10 s) for the mailbox to move past what is shown.
  while (!signal.aborted) {
    try {
      render(await api('GET', `${base}?wait=10&after_seq=${lastSeq}`, undefined, signal));
      status.replaceChildren();
    } catch (e) {
      if (e.name === 'AbortError' || e.status === 401 || signal.aborted) return;
      status.replaceChildren(errBox(e, 'Live updates paused, retrying'));
      await sleep(2000, signal);
    }
  }
}

// ---- The handoff inbox ------------------------------------------------------------

async function inboxView(root, signal) {
  const rows = h('tbody');
  const status = h('div');
  root.replaceChildren(h('h1', {}, 'Handoff inbox'),
    h('p', { class: 'muted' }, 'Conversations a human answers, longest waiting first. Updates every 2 s.'), status,
    h('table', { id: 'inbox' }, h('thead', {}, h('tr', {}, ['Tenant', 'Channel', 'Conversation', 'Waiting since', 'Last message'].map((t) => h('th', {}, t)))), rows));
  while (!signal.aborted) {
    try {
      const inbox = await api('GET', '/admin/v1/handoffs', undefined, signal);
      rows.replaceChildren(...inbox.conversations.map((c) => {
        const href = `#/tenants/${enc(c.client_slug)}/conversations/${c.conversation.id}`;
        return h('tr', { class: 'link', 'data-id': c.conversation.id, onclick: () => { location.hash = href; } },
          h('td', {}, c.client_name), h('td', {}, c.conversation.channel), h('td', {}, h('a', { href }, c.conversation.external_id)),
          h('td', {}, when(c.waiting_since)), h('td', {}, when(c.conversation.last_message_at)));
      }));
      if (!inbox.conversations.length) rows.append(h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'Nobody is waiting for a human.')));
      status.replaceChildren();
    } catch (e) {
      if (e.name === 'AbortError' || e.status === 401 || signal.aborted) return;
      status.replaceChildren(errBox(e, 'The inbox could not be read, retrying'));
    }
    await sleep(2000, signal);
  }
}

// ---- Replay ------------------------------------------------------------------------

function localInput(date) {
  const d = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

async function replayView(root) {
  const tenants = await allTenants();
  const tenant = h('select', { id: 'replay-tenant' }, tenants.map((c) => h('option', { value: c.slug }, `${c.name} (${c.slug})`)));
  const now = new Date();
  const from = h('input', { type: 'datetime-local', id: 'replay-from', value: localInput(new Date(now.getTime() - 3600e3)) });
  const to = h('input', { type: 'datetime-local', id: 'replay-to', value: localInput(new Date(now.getTime() + 60e3)) });
  const limit = h('input', { type: 'number', id: 'replay-limit', value: 20, min: 1, max: 200, style: 'width:90px' });
  const run = h('button', { type: 'submit', id: 'replay-run' }, 'Dry run');
  const out = h('div', { id: 'replay-result' });
  const form = h('form', { class: 'card' },
    h('p', { class: 'muted' }, 'Answers the archived messages again with today\'s configuration, storing and sending nothing, and shows the old and new replies side by side.'),
    h('div', { class: 'row' }, h('label', {}, 'Tenant'), tenant, h('label', {}, 'From'), from, h('label', {}, 'To'), to, h('label', {}, 'At most'), limit, run));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!tenant.value) { out.replaceChildren(errBox(new ApiError(0, '', 'Create a tenant first.'))); return; }
    run.disabled = true;
    out.replaceChildren(h('p', { class: 'muted' }, 'Replaying…'));
    try {
      const r = await api('POST', `/admin/v1/clients/${enc(tenant.value)}/replays`, {
        from: new Date(from.value).toISOString(), to: new Date(to.value).toISOString(), limit: Number(limit.value),
      });
      out.replaceChildren(h('p', { id: 'replay-summary' }, `${r.replayed} replayed, ${r.changed} changed, ${r.failed} without an answer, ${r.erased} erased.`),
        ...r.items.map((it) => h('div', { class: 'card replayed' },
          h('div', { class: 'row' }, h('strong', { class: 'grow' }, `${it.channel} ${it.conversation}`), h('span', { class: 'muted' }, when(it.received_at)),
            h('span', { class: 'badge' }, it.replayed_reply === null ? 'no answer' : it.changed ? 'changed' : 'same')),
          h('p', {}, 'user: ', h('span', { class: 'text' }, it.message)),
          h('div', { class: 'side' }, h('div', { class: 'before' }, it.original_reply === null ? '(no reply)' : it.original_reply),
            h('div', { class: 'after' }, it.replayed_reply === null ? '(no answer)' : it.replayed_reply)))));
      if (!r.items.length) out.append(h('p', { class: 'muted' }, 'The archive holds no messages of this tenant in that range.'));
    } catch (e) { out.replaceChildren(errBox(e, 'Replay')); } finally { run.disabled = false; }
  });
  root.replaceChildren(h('h1', {}, 'Replay'), form, out);
}

window.addEventListener('hashchange', route);
route();
