/* Replay: a tenant's archived messages in a time range answered again as a dry run,
 * old and new replies side by side. */

import { allTenants, api } from './api.js';
import { enc, errBox, h, when } from './dom.js';

function localInput(date) {
  const d = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

export async function replayView(root) {
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
    if (!tenant.value) { out.replaceChildren(errBox({ message: 'Create a tenant first.' })); return; }
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
