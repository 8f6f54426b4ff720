/* A tenant's page: its configuration (the API's validation messages beside the fields),
 * agent modes, channel accounts, API keys, knowledge documents, tools, webhooks and
 * usage; its conversations are in conversations.js. */

import { api } from './api.js';
import { conversationsTab } from './conversations.js';
import { enc, errBox, h, reload, showErrors, svg, table, when } from './dom.js';

const TABS = [['config', 'Configuration'], ['modes', 'Agent modes'], ['conversations', 'Conversations'],
  ['channels', 'Channels'], ['keys', 'API keys'], ['knowledge', 'Knowledge'], ['tools', 'Tools'],
  ['webhooks', 'Webhooks'], ['usage', 'Usage']];

export async function tenantView(root, slug, tab, signal) {
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
      try { await api('DELETE', `${base}/modes/${enc(m.module_key)}`); reload(); } catch (e) { result.replaceChildren(errBox(e)); }
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
      reload();
    } catch (e) { showErrors(e, errs, general); }
  });
  pane.replaceChildren(list, add);
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
      try { await api('DELETE', `${base}/api-keys/${k.id}`); reload(); } catch (e) { result.replaceChildren(errBox(e, 'Revoke')); }
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
      try { await api('DELETE', `${base}/knowledge/${d.id}`); reload(); } catch (e) { result.replaceChildren(errBox(e, 'Delete')); }
    },
  }, 'Delete');
  const file = h('input', { type: 'file', id: 'knowledge-file', accept: '.txt,.md,.markdown,text/plain,text/markdown' });
  const title = h('input', { placeholder: 'title (default: the file name)' });
  const upload = h('form', { class: 'row', id: 'knowledge-upload' }, file, title, h('button', { type: 'submit' }, 'Upload'));
  upload.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = file.files[0];
    if (!f) { result.replaceChildren(errBox({ message: 'Choose a text or markdown file.' })); return; }
    try {
      const content = await f.text();
      await api('POST', `${base}/knowledge`, { title: title.value.trim() || f.name, source: f.name, content });
      reload();
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
