/* The admin API as the console calls it: the operator's session (its token in
 * sessionStorage for the tab's life), errors as ApiError, a 401 handed to the page. */

const TOKEN_KEY = 'chatfleet.console.token';

/** The signed-in operator: token, `whoami` answer, and the current view's AbortController. */
export const session = { token: sessionStorage.getItem(TOKEN_KEY) || '', me: null, live: null };

let unauthorized = () => {};

/** What to do when a token is refused (sign in again). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/** Keeps (or, with '', forgets) the session's token. */
export function keepToken(token) {
  session.token = token;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(method, path, body, signal) {
  const headers = { Authorization: `Bearer ${session.token}` };
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
    unauthorized('Your token was refused (expired, revoked or mistyped): sign in again.');
    throw new ApiError(401, 'unauthorized', 'signed out');
  }
  if (!r.ok) {
    const e = data && data.error;
    throw new ApiError(r.status, e ? e.code : `http_${r.status}`,
      e ? e.message : (text || r.statusText || `HTTP ${r.status}`));
  }
  return data;
}

/** Every tenant, page by page. */
export async function allTenants() {
  const all = [];
  let after = 0;
  for (;;) {
    const page = await api('GET', `/admin/v1/clients?limit=200&after=${after}`);
    all.push(...page.clients);
    if (!page.next_after) return all;
    after = page.next_after;
  }
}
