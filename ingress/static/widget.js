/*
 * chatfleet website widget. Include it with one tag:
 *
 *   <script src="https://chat.example.com/widget.js" data-client="your-slug" defer></script>
 *
 * Vanilla JavaScript, no build step, no requests anywhere but the chatfleet host that
 * served this file. It opens a session (keeping a random visitor id in localStorage so a
 * returning visitor resumes the conversation), sends messages with a client_message_id
 * (a retried send is answered once), and receives with the cursor it was given, so no
 * message is lost or shown twice across reconnects: over server-sent events where the
 * browser has EventSource (the reply is shown as it is written, then replaced by the
 * stored message), by long-polling otherwise or after the stream failed twice. Errors are
 * retried with exponential backoff; an expired session is reopened.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || !script.dataset.client) {
    console.error("chatfleet widget: add data-client=\"<slug>\" to the script tag");
    return;
  }
  var slug = script.dataset.client;
  var base = new URL(script.src, location.href).origin;
  var store = "chatfleet:" + slug + ":";
  var WAIT_S = 25;

  var session = null; // { token, expires_at }
  var cursor = ""; // from the start on each page load: a returning visitor sees the history
  var seen = {}; // message ids already rendered
  var failures = 0;
  var polling = false;
  var streamFailures = 0; // streams that failed to open; at 2, long-polling takes over
  var live = {}; // reply id -> the bubble its deltas are written into

  // ---- UI ----------------------------------------------------------------------
  var css =
    ".cfw{position:fixed;right:20px;bottom:20px;width:340px;max-height:480px;display:flex;" +
    "flex-direction:column;font:14px/1.4 system-ui,sans-serif;background:#fff;border:1px solid #ccd;" +
    "border-radius:10px;box-shadow:0 6px 24px rgba(0,0,0,.15);z-index:2147483000}" +
    ".cfw-h{padding:10px 14px;background:#2b5cab;color:#fff;border-radius:10px 10px 0 0;font-weight:600}" +
    ".cfw-l{flex:1;overflow-y:auto;padding:10px;display:flex;flex-direction:column;gap:6px;min-height:200px}" +
    ".cfw-m{max-width:80%;padding:6px 10px;border-radius:8px;white-space:pre-wrap;word-wrap:break-word}" +
    ".cfw-user{align-self:flex-end;background:#2b5cab;color:#fff}" +
    ".cfw-assistant{align-self:flex-start;background:#eef1f6}" +
    ".cfw-agent{align-self:flex-start;background:#fff4d6;border:1px solid #f0d58a}" +
    ".cfw-system{align-self:center;color:#667;font-size:12px}" +
    ".cfw-typing{align-self:flex-start;color:#667;font-size:12px;display:none}" +
    ".cfw-f{display:flex;border-top:1px solid #dde}" +
    ".cfw-f input{flex:1;border:0;padding:10px;font:inherit;outline:none;border-radius:0 0 0 10px}" +
    ".cfw-f button{border:0;background:#2b5cab;color:#fff;padding:0 16px;font:inherit;cursor:pointer;border-radius:0 0 10px 0}" +
    ".cfw-s{padding:2px 10px;color:#a33;font-size:12px;min-height:16px}" +
    ".cfw-c{align-self:flex-start;display:flex;flex-wrap:wrap;gap:4px}" +
    ".cfw-c button{border:1px solid #2b5cab;background:#fff;color:#2b5cab;border-radius:12px;padding:3px 10px;font:inherit;cursor:pointer}";
  var style = document.createElement("style");
  style.textContent = css;
  document.head.appendChild(style);

  var root = document.createElement("div");
  root.className = "cfw";
  root.setAttribute("data-chatfleet-widget", slug);
  root.innerHTML =
    '<div class="cfw-h">Chat with us</div>' +
    '<div class="cfw-l" role="log" aria-live="polite"></div>' +
    '<div class="cfw-typing">typing…</div>' +
    '<div class="cfw-s"></div>' +
    '<form class="cfw-f"><input name="text" autocomplete="off" placeholder="Type a message" maxlength="4000">' +
    '<button type="submit">Send</button></form>';
  document.body.appendChild(root);
  var list = root.querySelector(".cfw-l");
  var status = root.querySelector(".cfw-s");
  var typing = root.querySelector(".cfw-typing");
  var form = root.querySelector("form");
  var input = form.querySelector("input");

  // A reply's choices (offer_choices): buttons that send the choice's text, once.
  function renderChoices(choices) {
    if (!choices || !choices.length) return;
    var box = document.createElement("div");
    box.className = "cfw-c";
    choices.forEach(function (choice) {
      var b = document.createElement("button");
      b.type = "button";
      b.textContent = choice; // untrusted text, like messages
      b.addEventListener("click", function () {
        box.remove();
        submitText(choice);
      });
      box.appendChild(b);
    });
    list.appendChild(box);
    list.scrollTop = list.scrollHeight;
  }

  function render(id, role, text, choices) {
    if (id && seen[id]) return;
    if (id) seen[id] = true;
    if (role !== "user") typing.style.display = "none";
    var bubble = id && live[id];
    if (bubble) {
      // The stored message replaces what was shown while it was written.
      delete live[id];
      bubble.classList.remove("cfw-live");
      bubble.setAttribute("data-id", id);
      bubble.textContent = text;
      renderChoices(choices);
      return;
    }
    var el = document.createElement("div");
    el.className = "cfw-m cfw-" + role;
    el.setAttribute("data-role", role);
    if (id) el.setAttribute("data-id", id);
    el.textContent = text; // never innerHTML: messages are untrusted text
    list.appendChild(el);
    list.scrollTop = list.scrollHeight;
    renderChoices(choices);
  }

  function setStatus(text) {
    status.textContent = text || "";
  }

  // ---- session -----------------------------------------------------------------
  function visitorId() {
    var v = localStorage.getItem(store + "visitor");
    if (!v) {
      var bytes = new Uint8Array(16);
      crypto.getRandomValues(bytes);
      v = Array.prototype.map.call(bytes, function (b) {
        return ("0" + b.toString(16)).slice(-2);
      }).join("");
      localStorage.setItem(store + "visitor", v);
    }
    return v;
  }

  function openSession() {
    return fetch(base + "/widget/v1/sessions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ client: slug, visitor_id: visitorId() }),
    }).then(function (r) {
      if (r.status !== 201) throw new Error("session refused (" + r.status + ")");
      return r.json();
    }).then(function (s) {
      session = s;
      return s;
    });
  }

  function ensureSession() {
    if (session && Date.parse(session.expires_at) - Date.now() > 60000) {
      return Promise.resolve(session);
    }
    return openSession();
  }

  function authed(path, init) {
    return ensureSession().then(function (s) {
      init = init || {};
      init.headers = Object.assign({}, init.headers, { authorization: "Bearer " + s.token });
      return fetch(base + path, init);
    }).then(function (r) {
      if (r.status === 401) session = null; // expired: reopen on the next try
      return r;
    });
  }

  // ---- sending -----------------------------------------------------------------
  function newId() {
    return crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random();
  }

  function send(text, clientMessageId, tries) {
    return authed("/widget/v1/messages", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ text: text, client_message_id: clientMessageId }),
    }).then(function (r) {
      if (r.status === 202) return r.json();
      if (r.status >= 500 || r.status === 401) throw new Error("retry");
      return r.json().then(function (e) {
        throw new Error(e.message || "not sent");
      });
    }).catch(function (e) {
      // Safe to repeat: the same client_message_id is the same message.
      if (e.message === "retry" || e instanceof TypeError) {
        if (tries < 6) return delay(backoff(tries)).then(function () {
          return send(text, clientMessageId, tries + 1);
        });
      }
      throw e;
    });
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    submitText(text);
  });

  function submitText(text) {
    send(text, newId(), 0).then(function (ok) {
      render(ok.message_id, "user", text);
      setStatus("");
    }).catch(function (e) {
      setStatus("Not sent: " + e.message);
      input.value = text;
    });
  }

  // ---- receiving ---------------------------------------------------------------
  function delay(ms) {
    return new Promise(function (r) { setTimeout(r, ms); });
  }

  function backoff(n) {
    var ms = Math.min(30000, 500 * Math.pow(2, n));
    return ms / 2 + Math.random() * ms / 2;
  }

  function poll() {
    if (polling) return;
    polling = true;
    var q = "/widget/v1/messages?wait=" + WAIT_S + "&after=" + encodeURIComponent(cursor);
    authed(q).then(function (r) {
      if (r.status === 200) {
        return r.json().then(function (body) {
          body.messages.forEach(function (m) { render(m.id, m.role, m.text, m.choices); });
          cursor = body.cursor;
          failures = 0;
          setStatus("");
        });
      }
      if (r.status === 204) { failures = 0; return; }
      if (r.status === 409) return; // another poll of this session took over
      if (r.status === 400) { cursor = ""; return; } // not this conversation's cursor
      throw new Error("poll failed (" + r.status + ")");
    }).catch(function () {
      failures += 1;
      if (failures > 2) setStatus("Reconnecting…");
      return delay(backoff(failures));
    }).then(function () {
      polling = false;
      poll();
    });
  }

  // ---- streaming (server-sent events) --------------------------------------------
  function liveBubble(replyId) {
    if (!live[replyId]) {
      var el = document.createElement("div");
      el.className = "cfw-m cfw-assistant cfw-live";
      el.setAttribute("data-role", "assistant");
      el.setAttribute("data-live", replyId);
      list.appendChild(el);
      live[replyId] = el;
    }
    return live[replyId];
  }

  function stream() {
    if (!window.EventSource || streamFailures >= 2) return poll();
    ensureSession().then(function (s) {
      var url = base + "/widget/v1/stream?token=" + encodeURIComponent(s.token) +
        (cursor ? "&after=" + encodeURIComponent(cursor) : "");
      var es = new EventSource(url);
      var opened = false;
      function data(e) {
        try { return JSON.parse(e.data); } catch (x) { return {}; }
      }
      function again(wait) {
        es.close();
        delay(wait).then(stream);
      }
      es.onopen = function () {
        opened = true;
        streamFailures = 0;
        setStatus("");
      };
      es.addEventListener("message", function (e) {
        var m = data(e);
        render(m.id, m.role, m.text, m.choices);
        if (e.lastEventId) cursor = e.lastEventId;
      });
      es.addEventListener("typing", function () {
        typing.style.display = "block";
      });
      es.addEventListener("delta", function (e) {
        var d = data(e);
        if (seen[d.reply_id]) return; // stored already
        typing.style.display = "none";
        liveBubble(d.reply_id).textContent += d.text;
        list.scrollTop = list.scrollHeight;
      });
      es.addEventListener("discard", function (e) {
        var d = data(e);
        typing.style.display = "none";
        if (live[d.reply_id]) {
          list.removeChild(live[d.reply_id]);
          delete live[d.reply_id];
        }
      });
      es.addEventListener("error", function (e) {
        if (e.data) {
          // The server ended the stream, saying why.
          var code = (data(e).error || {}).code;
          if (code === "stream_superseded") return es.close();
          if (code === "session_expired" || code === "session_revoked") session = null;
          return again(backoff(0));
        }
        if (!opened || es.readyState === EventSource.CLOSED) {
          // Refused (a 4xx closes it: perhaps the session ended) or never opened.
          streamFailures += 1;
          if (opened) session = null;
          return again(backoff(streamFailures));
        }
        // Dropped after it opened: EventSource reconnects by itself (with Last-Event-ID).
      });
    }).catch(function () {
      streamFailures += 1;
      delay(backoff(streamFailures)).then(stream);
    });
  }

  stream();
})();
