/* Conversations: a tenant's list (newest first, by channel and mode), one conversation
 * live with the agent's reply box and the take-over / hand-back switch, and the handoff
 * inbox across tenants. */

import { api } from './api.js';
import { enc, errBox, h, sleep, when } from './dom.js';

export async function conversationsTab(pane, base) {
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

export async function conversationView(root, slug, id, signal) {
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

export async function inboxView(root, signal) {
  const rows = h('tbody');
  const status = h('div');
  root.replaceChildren(h('h1', {}, 'Handoff inbox'),
    h('p', { class: 'muted' }, 'Conversations a human answers, longest waiting first; updated as they are handed over and back.'), status,
    h('table', { id: 'inbox' }, h('thead', {}, h('tr', {}, ['Tenant', 'Channel', 'Conversation', 'Waiting since', 'Last message'].map((t) => h('th', {}, t)))), rows));
  // Each request after the first waits (up to 20 s) for the list to change.
  let version = '';
  while (!signal.aborted) {
    try {
      const wait = version ? `?wait=20&seen=${enc(version)}` : '';
      const inbox = await api('GET', `/admin/v1/handoffs${wait}`, undefined, signal);
      version = inbox.version;
      rows.replaceChildren(...inbox.conversations.map((c) => {
        const href = `#/tenants/${enc(c.client_slug)}/conversations/${c.conversation.id}`;
        return h('tr', { class: 'link', 'data-id': c.conversation.id, onclick: () => { location.hash = href; } },
          h('td', {}, c.client_name), h('td', {}, c.conversation.channel), h('td', {}, h('a', { href }, c.conversation.external_id)),
          h('td', {}, when(c.waiting_since)), h('td', {}, when(c.conversation.last_message_at)));
      }));
      if (!inbox.conversations.length) rows.append(h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'Nobody is waiting for a human.')));
      status.replaceChildren(inbox.unavailable_shards.length
        ? errBox({ message: `database shards ${inbox.unavailable_shards.join(', ')} could not be read: their conversations are missing` }) : '');
    } catch (e) {
      if (e.name === 'AbortError' || e.status === 401 || signal.aborted) return;
      status.replaceChildren(errBox(e, 'The inbox could not be read, retrying'));
      await sleep(2000, signal);
    }
  }
}
