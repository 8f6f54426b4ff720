/* chatfleet operator console: one framework-free page over the admin API (/admin/v1).
 *
 * Everything it shows from the API goes into the page as text nodes (h() in dom.js never
 * parses HTML), so a message that contains markup is shown as the text it is. The
 * operator's token is kept in sessionStorage for the tab's life; a 401 anywhere returns
 * to sign-in. Errors are shown where the action was taken: beside the field the API
 * named, or in the card whose action failed; the page is never left blank.
 *
 * This module signs in and routes; the views are in tenant.js, conversations.js and
 * replay.js, the DOM helpers in dom.js, the API calls in api.js.
 *
 * Views (the part of the URL after #): /tenants, /tenants/<slug>/<tab>,
 * /tenants/<slug>/conversations/<id>, /inbox, /replay.
 */

import { allTenants, api, keepToken, onUnauthorized, session as S } from './api.js';
import { conversationView, inboxView } from './conversations.js';
import { enc, errBox, h, showErrors, when } from './dom.js';
import { replayView } from './replay.js';
import { tenantView } from './tenant.js';

const mainEl = document.getElementById('main');

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
    keepToken(S.token);
    showWho();
    if (!location.hash || location.hash === '#/') location.hash = '#/tenants';
    else route();
  });
  mainEl.replaceChildren(form);
  token.focus();
}

function signOut(message) {
  if (S.live) S.live.abort();
  keepToken('');
  S.me = null;
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

onUnauthorized(signOut);
window.addEventListener('hashchange', route);
route();
