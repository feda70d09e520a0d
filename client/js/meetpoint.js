// meetpoint.js — a dependency-free browser (and Node ≥ 22) client for a
// meetpoint relay, and for nymea-remoteproxy servers speaking the same
// protocol. One function per role:
//
//   pair(opts)  — the legacy API: two clients presenting the same token
//                 (and nonce) are paired; resolves with a Tunnel once the
//                 relay says TunnelEstablished.
//   reach(opts) — the TunnelProxy API: a client of a registered server
//                 uuid; resolves with a Tunnel to that server.
//
// A Tunnel sends strings, ArrayBuffers, typed arrays and Blobs; between two
// WebSocket clients each message arrives as sent (text stays text, binary
// stays binary). From a raw TCP partner bytes arrive as text while they are
// valid UTF-8 and as ArrayBuffers after that (see docs/protocol.md): use
// bytes(data) to get a Uint8Array either way.
//
// Errors are MeetpointError with a stable `code`:
//   auth_failed      the relay refused the token (AuthenticationErrorAuthenticationFailed)
//   auth_error       the relay could not decide (timeout, proxy error; authenticationError says which)
//   no_partner       nobody else presented the token within the relay's alone timeout
//   tunnel_exists    a tunnel for this token and nonce is already established
//   duplicate_uuid   the partner presented the same uuid
//   server_not_found (reach) no server registered with that uuid
//   tunnelproxy      (reach) any other TunnelProxy refusal (tunnelProxyError says which)
//   partner_left     the tunnel ended because the other side left
//   server_shutdown  the relay is shutting down
//   protocol         the relay answered a JSON-RPC error or broke the protocol
//   timeout          opts.timeout passed before the tunnel was established
//   network          the WebSocket could not connect or closed without a reason
//   closed           the tunnel was closed by this side

/** The version of this client (the release it belongs to). */
export const VERSION = "0.2.0";

/** An error of the relay or of the connection, with a stable `code`. */
export class MeetpointError extends Error {
  constructor(code, message, extra) {
    super(message);
    this.name = "MeetpointError";
    this.code = code;
    if (extra) Object.assign(this, extra);
  }
}

// Node 20 and 21 have a WebSocket only behind a flag: say so once, when
// the module is imported, rather than at the first pair().
const nodeVersion = globalThis.process?.versions?.node;
const noWebSocket = nodeVersion && typeof globalThis.WebSocket === "undefined"
  ? `Node ${nodeVersion} has no WebSocket: run it with --experimental-websocket (Node 20.10+), use Node 22 or later, or pass opts.WebSocket`
  : "";
if (noWebSocket) console.warn("meetpoint: " + noWebSocket);

const NO_ERROR = "AuthenticationErrorNoError";
const TP_NO_ERROR = "TunnelProxyErrorNoError";

function randomUUID() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const encoder = new TextEncoder();

/** bytes returns a message's payload as a Uint8Array (text as UTF-8). */
export function bytes(data) {
  if (typeof data === "string") return encoder.encode(data);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError("bytes: a string, ArrayBuffer or typed array is needed");
}

// closeError maps a close frame before or after the tunnel to an error.
function closeError(ev, established) {
  const why = ev.reason || "";
  if (established) {
    if (why === "partner closed") return new MeetpointError("partner_left", "the partner left the tunnel", { closeCode: ev.code });
  } else {
    if (why.startsWith("No partner arrived"))
      return new MeetpointError("no_partner", "no partner presented the token within the relay's alone timeout", { closeCode: ev.code });
    if (why === "Tunnel already exists")
      return new MeetpointError("tunnel_exists", "a tunnel for this token and nonce is already established", { closeCode: ev.code });
    if (why === "Duplicated client UUID.")
      return new MeetpointError("duplicate_uuid", "the partner presented the same uuid", { closeCode: ev.code });
  }
  if (ev.code === 1001) return new MeetpointError("server_shutdown", "the relay is shutting down", { closeCode: ev.code });
  if (ev.code === 1006 || (!why && ev.code !== 1000))
    return new MeetpointError("network", `the connection to the relay was lost (close ${ev.code})`, { closeCode: ev.code });
  if (established && ev.code === 1000) return new MeetpointError("partner_left", why || "the tunnel ended", { closeCode: ev.code });
  return new MeetpointError("protocol", `the relay closed the connection: ${ev.code} ${why}`.trim(), { closeCode: ev.code });
}

/**
 * A Tunnel is an established connection to the partner. It is an
 * EventTarget: "message" events carry `data` (a string or an ArrayBuffer),
 * one "close" event carries `detail` {code, reason, wasClean, error}.
 */
export class Tunnel extends EventTarget {
  #ws;
  #closedResolve;
  #closing = false;
  #queue = []; // messages that arrived before the first "message" listener
  #listening = false;
  #onmessage = null;

  /** @internal Use pair() or reach(). */
  constructor(ws, peer) {
    super();
    this.#ws = ws;
    /** The partner: {name, uuid} (for reach(): the server uuid). */
    this.peer = peer;
    /** Resolves once with {code, reason, wasClean, error} when the tunnel ends. */
    this.closed = new Promise((res) => (this.#closedResolve = res));
    ws.onmessage = (ev) => this.#deliver(ev.data);
    ws.onclose = (ev) => {
      const error = this.#closing ? new MeetpointError("closed", "closed by this side") : closeError(ev, true);
      const detail = { code: ev.code, reason: ev.reason, wasClean: ev.wasClean, error };
      this.#closedResolve(detail);
      this.dispatchEvent(new CustomEvent("close", { detail }));
    };
    ws.onerror = null;
  }

  // Until somebody listens for "message", messages are kept (the partner
  // may send the moment the tunnel exists, before the caller's await
  // resumes), then delivered in order.
  #deliver(data) {
    if (!this.#listening) this.#queue.push(data);
    else this.dispatchEvent(new MessageEvent("message", { data }));
  }

  #listen() {
    if (this.#listening) return;
    this.#listening = true;
    const q = this.#queue;
    this.#queue = [];
    queueMicrotask(() => q.forEach((d) => this.dispatchEvent(new MessageEvent("message", { data: d }))));
  }

  addEventListener(type, listener, options) {
    super.addEventListener(type, listener, options);
    if (type === "message") this.#listen();
  }

  /** The "message" handler property, like WebSocket's. */
  get onmessage() {
    return this.#onmessage;
  }
  set onmessage(fn) {
    if (this.#onmessage) super.removeEventListener("message", this.#onmessage);
    this.#onmessage = fn;
    if (fn) this.addEventListener("message", fn);
  }

  /** Sends one message: a string (TEXT), or binary data (BINARY). */
  send(data) {
    if (this.#ws.readyState !== 1) throw new MeetpointError("closed", "the tunnel is closed");
    this.#ws.send(data);
  }

  /** Bytes queued by send() and not yet handed to the network. */
  get bufferedAmount() {
    return this.#ws.bufferedAmount;
  }

  /**
   * Resolves when bufferedAmount is at most lowWater: await it before the
   * next send() to keep memory bounded when the partner reads slowly.
   * WebSocket has no drain event, so this polls every `interval` ms.
   */
  drained(lowWater = 0, interval = 10) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.#ws.readyState !== 1) return reject(new MeetpointError("closed", "the tunnel is closed"));
        if (this.#ws.bufferedAmount <= lowWater) return resolve();
        setTimeout(check, interval);
      };
      check();
    });
  }

  /**
   * Ends the tunnel (the partner sees "partner_left"). A code WebSocket
   * refuses (only 1000 and 3000-4999 are allowed) throws, and the tunnel
   * stays open.
   */
  close(code = 1000, reason = "") {
    this.#ws.close(code, reason); // first: if it throws, nothing was closed
    this.#closing = true;
    return this.closed;
  }
}

// open connects a WebSocket and runs the JSON-RPC steps: Hello (optional),
// then `request`, then waits for onReply(msg) to return a peer; make
// builds what the promise resolves with.
function open(opts, request, onReply, make = (ws, peer) => new Tunnel(ws, peer)) {
  const WS = opts.WebSocket || globalThis.WebSocket;
  if (!WS) throw new MeetpointError("network", noWebSocket || "no WebSocket implementation (pass opts.WebSocket)");
  if (!opts.url || !/^wss?:\/\//.test(opts.url))
    throw new TypeError(`url must be ws://HOST:PORT/ or wss://HOST:PORT/, got ${JSON.stringify(opts.url)}`);
  return new Promise((resolve, reject) => {
    const ws = new WS(request.inURL ? withParams(opts.url, request.params) : opts.url);
    ws.binaryType = "arraybuffer";
    let nextId = 0, settled = false;
    const timer = opts.timeout > 0 ? setTimeout(() => fail(new MeetpointError("timeout", `no tunnel within ${opts.timeout} ms`)), opts.timeout) : null;
    const fail = (err) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      try { ws.close(); } catch (_) { /* already closed */ }
      reject(err);
    };
    const call = (method, params) => {
      const msg = { id: nextId++, method };
      if (params) msg.params = params;
      ws.send(JSON.stringify(msg) + "\n");
      return msg.id;
    };
    let helloId = -1, reqId = -1, opened = false;
    ws.onopen = () => {
      opened = true;
      if (request.inURL) {
        // Authenticated by the upgrade itself: the relay only says
        // TunnelEstablished now.
        const out = onReply({ params: { authenticationError: NO_ERROR } }, true);
        if (out instanceof Error) fail(out);
        else if (out) {
          settled = true;
          clearTimeout(timer);
          resolve(make(ws, out));
        }
      } else if (opts.hello !== false) helloId = call("RemoteProxy.Hello");
      else reqId = call(request.method, request.params);
    };
    // A connection that fails gets "error" (and, in browsers, "close" with
    // 1006; some runtimes send no close): either way it is network. With a
    // token in the URL a refused token is an HTTP 401 (a refused channel a
    // 403), which browsers do not show: the message says so.
    ws.onerror = () => {
      if (!opened)
        fail(new MeetpointError("network", request.inURL
          ? `the relay at ${opts.url} refused the connection (a refused token in the URL is answered with HTTP 401, a refused channel with 403, which a browser does not report)`
          : `could not connect to the relay at ${opts.url}`));
    };
    ws.onclose = (ev) => fail(closeError(ev, false));
    ws.onmessage = (ev) => {
      if (settled) return;
      let msg;
      try {
        if (typeof ev.data !== "string") throw new Error("binary message before the tunnel");
        msg = JSON.parse(ev.data);
        if (msg === null || typeof msg !== "object" || Array.isArray(msg)) throw new Error("not a JSON object");
      } catch (e) {
        return fail(new MeetpointError("protocol", `unexpected message from the relay: ${e.message}`));
      }
      if (msg.status === "error") return fail(new MeetpointError("protocol", `relay: ${msg.error}`));
      if (helloId >= 0 && msg.id === helloId && msg.notification === undefined) {
        helloId = -1;
        if (opts.onHello) opts.onHello(msg.params || {});
        reqId = call(request.method, request.params);
        return;
      }
      const out = onReply(msg, msg.id === reqId && msg.notification === undefined);
      if (out instanceof Error) return fail(out);
      if (out) {
        settled = true;
        clearTimeout(timer);
        resolve(make(ws, out));
      }
    };
  });
}

// withParams adds the pairing parameters to a relay URL (urlToken).
function withParams(url, params) {
  const u = new URL(url);
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  return u.toString();
}

/**
 * pair connects to the relay at opts.url and pairs with the other client
 * presenting the same token (and nonce).
 *
 * opts: {url, token, nonce?, name?, uuid?, hello? (default true),
 *        urlToken? (send token, nonce, name and uuid in the WebSocket URL
 *        instead of JSON-RPC: one round trip less; a browser cannot tell a
 *        refused token from a network error then),
 *        timeout? (ms, 0 = none: the relay's alone timeout still applies),
 *        onWaiting?() (authenticated, waiting for the partner),
 *        onHello?(info), WebSocket? (constructor, for runtimes without one)}
 * @returns {Promise<Tunnel>} with tunnel.peer = {name, uuid} of the partner
 */
export function pair(opts) {
  if (!opts || typeof opts.token !== "string" || opts.token === "") throw new TypeError("pair: opts.token is required");
  const params = {
    uuid: opts.uuid || randomUUID(),
    name: opts.name || "meetpoint.js",
    token: opts.token,
  };
  if (opts.nonce) params.nonce = opts.nonce;
  return open(opts, { method: "Authentication.Authenticate", params, inURL: !!opts.urlToken }, (msg, isReply) => {
    if (isReply) {
      const e = msg.params && msg.params.authenticationError;
      if (e !== NO_ERROR) {
        if (e === "AuthenticationErrorAuthenticationFailed")
          return new MeetpointError("auth_failed", "the relay refused the token", { authenticationError: e });
        return new MeetpointError("auth_error", `the relay could not check the token (${e})`, { authenticationError: e });
      }
      if (opts.onWaiting) opts.onWaiting();
      return null;
    }
    if (msg.notification === "RemoteProxy.TunnelEstablished") {
      const p = msg.params || {};
      return { name: p.name, uuid: p.uuid };
    }
    return null;
  });
}

/**
 * A Subscription is a connection subscribed to event channels: "event"
 * events carry `detail` {channel, data}; one "close" event and the
 * `closed` promise say why it ended. Events that arrive before the first
 * "event" listener are kept for it.
 */
export class Subscription extends EventTarget {
  #ws;
  #queue = [];
  #listening = false;
  #closing = false;
  #closedResolve;

  /** @internal Use subscribe(). */
  constructor(ws, channels) {
    super();
    this.#ws = ws;
    /** The channels subscribed to. */
    this.channels = channels;
    /** Resolves once with {code, reason, wasClean, error} when it ends. */
    this.closed = new Promise((res) => (this.#closedResolve = res));
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch (_) { return; }
      if (!m || m.notification !== "Events.Event" || !m.params) return;
      const detail = { channel: m.params.channel, data: m.params.data };
      if (this.#listening) this.dispatchEvent(new CustomEvent("event", { detail }));
      else this.#queue.push(detail);
    };
    ws.onclose = (ev) => {
      const error = this.#closing ? new MeetpointError("closed", "closed by this side") : closeError(ev, false);
      const detail = { code: ev.code, reason: ev.reason, wasClean: ev.wasClean, error };
      this.#closedResolve(detail);
      this.dispatchEvent(new CustomEvent("close", { detail }));
    };
  }

  addEventListener(type, listener, options) {
    super.addEventListener(type, listener, options);
    if (type === "event" && !this.#listening) {
      this.#listening = true;
      const q = this.#queue;
      this.#queue = [];
      queueMicrotask(() => q.forEach((detail) => this.dispatchEvent(new CustomEvent("event", { detail }))));
    }
  }

  /** Ends the subscription. */
  close() {
    this.#closing = true;
    this.#ws.close(1000, "");
    return this.closed;
  }
}

/**
 * subscribe connects to the relay at opts.url and subscribes to event
 * channels (the relay's --events): opts {url, token, channels, urlToken?,
 * hello?, timeout?, WebSocket?}.
 * @returns {Promise<Subscription>}
 */
export function subscribe(opts) {
  if (!opts || typeof opts.token !== "string" || !Array.isArray(opts.channels) || opts.channels.length === 0)
    throw new TypeError("subscribe: opts.token and opts.channels (a non-empty array) are required");
  const params = opts.urlToken ? { token: opts.token, channels: opts.channels.join(",") } : { token: opts.token, channels: opts.channels };
  return open(opts, { method: "Events.Subscribe", params, inURL: !!opts.urlToken }, (msg, isReply) => {
    if (!isReply) return null;
    const e = msg.params && msg.params.authenticationError;
    if (e !== NO_ERROR) {
      if (e === "AuthenticationErrorAuthenticationFailed")
        return new MeetpointError("auth_failed", "the relay refused the token or a channel", { authenticationError: e });
      return new MeetpointError("auth_error", `the relay could not check the token (${e})`, { authenticationError: e });
    }
    return { channels: (msg.params && msg.params.channels) || opts.channels };
  }, (ws, out) => new Subscription(ws, out.channels));
}

/**
 * reach connects to the relay at opts.url as a TunnelProxy client of the
 * server registered with opts.serverUuid.
 *
 * opts: {url, serverUuid, name?, uuid?, hello? (default true), timeout?,
 *        WebSocket?}
 * @returns {Promise<Tunnel>} with tunnel.peer = {uuid: serverUuid}
 */
export function reach(opts) {
  if (!opts || typeof opts.serverUuid !== "string" || opts.serverUuid === "") throw new TypeError("reach: opts.serverUuid is required");
  const params = {
    clientName: opts.name || "meetpoint.js",
    clientUuid: opts.uuid || randomUUID(),
    serverUuid: opts.serverUuid,
  };
  return open(opts, { method: "TunnelProxy.RegisterClient", params }, (msg, isReply) => {
    if (!isReply) return null;
    const e = msg.params && msg.params.tunnelProxyError;
    if (e === TP_NO_ERROR) return { uuid: opts.serverUuid };
    if (e === "TunnelProxyErrorServerNotFound")
      return new MeetpointError("server_not_found", `no server is registered with uuid ${opts.serverUuid}`, { tunnelProxyError: e });
    return new MeetpointError("tunnelproxy", `the relay refused the client (${e})`, { tunnelProxyError: e });
  });
}
