// Tests of meetpoint.js against a real relay. Run by `go test ./client/js`
// (which starts the relay, a TunnelProxy echo server and passes their
// addresses in the environment), or by hand:
//   MEETPOINT_WS=ws://127.0.0.1:8443/ node --experimental-websocket --test client/js/test/
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { pair, reach, subscribe, bytes, MeetpointError, VERSION } from "../meetpoint.js";

const WS = process.env.MEETPOINT_WS;
const TCP = process.env.MEETPOINT_TCP; // host:port of the same relay
const TP_SERVER = process.env.MEETPOINT_TP_SERVER; // uuid of an echo server
if (!WS) throw new Error("MEETPOINT_WS is not set (see the comment at the top)");

let n = 0;
const token = () => `js-test-${process.pid}-${Date.now()}-${n++}`;

function next(tunnel) {
  return new Promise((resolve) => tunnel.addEventListener("message", (ev) => resolve(ev.data), { once: true }));
}

async function rejectsWith(p, code) {
  await assert.rejects(p, (err) => {
    assert.ok(err instanceof MeetpointError, `not a MeetpointError: ${err}`);
    assert.equal(err.code, code, err.message);
    return true;
  });
}

test("two clients pair and exchange text and binary both ways", async () => {
  const tk = token();
  let waited = false;
  const [a, b] = await Promise.all([
    pair({ url: WS, token: tk, name: "alice", onWaiting: () => (waited = true) }),
    pair({ url: WS, token: tk, name: "bob" }),
  ]);
  assert.equal(a.peer.name, "bob");
  assert.equal(b.peer.name, "alice");
  assert.ok(waited, "onWaiting was not called");

  let got = next(b);
  a.send("héllo ✓");
  assert.equal(await got, "héllo ✓");

  const all = new Uint8Array(256).map((_, i) => i);
  got = next(a);
  b.send(all);
  const bin = await got;
  assert.ok(bin instanceof ArrayBuffer, `binary arrived as ${typeof bin}`);
  assert.deepEqual(new Uint8Array(bin), all);

  got = next(b);
  a.send(new Blob([all.slice(0, 16)]));
  assert.deepEqual(new Uint8Array(await got), all.slice(0, 16));

  a.close();
  const end = await b.closed;
  assert.equal(end.error.code, "partner_left");
  assert.equal(end.code, 1000);
  assert.equal((await a.closed).error.code, "closed");
});

// close() with a code a WebSocket refuses (1001: browsers and Node allow
// 1000 and 3000-4999 only) throws, and the tunnel stays open: a later
// departure of the partner is still partner_left, not "closed by this side".
test("a refused close code leaves the tunnel open and its end reported as it happens", async () => {
  const tk = token();
  const [a, b] = await Promise.all([pair({ url: WS, token: tk }), pair({ url: WS, token: tk })]);
  assert.throws(() => a.close(1001));
  let got = next(b);
  a.send("still open");
  assert.equal(await got, "still open");
  b.close();
  assert.equal((await a.closed).error.code, "partner_left");
});

test("messages sent the moment the tunnel exists are kept until a listener is added", async () => {
  const tk = token();
  const [a, b] = await Promise.all([pair({ url: WS, token: tk }), pair({ url: WS, token: tk })]);
  a.send("one");
  a.send("two");
  await new Promise((r) => setTimeout(r, 100));
  const seen = [];
  await new Promise((resolve) => {
    b.onmessage = (ev) => {
      seen.push(ev.data);
      if (seen.length === 2) resolve();
    };
  });
  assert.deepEqual(seen, ["one", "two"]);
  a.close();
  b.close();
});

test("nonces separate tunnels on one token", async () => {
  const tk = token();
  const [x1, y1, x2, y2] = await Promise.all([
    pair({ url: WS, token: tk, nonce: "x", name: "x1" }),
    pair({ url: WS, token: tk, nonce: "y", name: "y1" }),
    pair({ url: WS, token: tk, nonce: "x", name: "x2" }),
    pair({ url: WS, token: tk, nonce: "y", name: "y2" }),
  ]);
  assert.deepEqual([x1.peer.name, x2.peer.name, y1.peer.name, y2.peer.name], ["x2", "x1", "y2", "y1"]);
  for (const t of [x1, y1, x2, y2]) t.close();
});

test("a refused token is auth_failed", async () => {
  await rejectsWith(pair({ url: WS, token: "bad-" + token() }), "auth_failed");
});

test("a lone client gets no_partner after the relay's alone timeout", async () => {
  await rejectsWith(pair({ url: WS, token: token() }), "no_partner");
});

test("the client's own timeout is timeout", async () => {
  await rejectsWith(pair({ url: WS, token: token(), timeout: 100 }), "timeout");
});

test("a third client is tunnel_exists, the tunnel is unaffected", async () => {
  const tk = token();
  const [a, b] = await Promise.all([pair({ url: WS, token: tk }), pair({ url: WS, token: tk })]);
  await rejectsWith(pair({ url: WS, token: tk }), "tunnel_exists");
  const got = next(b);
  a.send("still here");
  assert.equal(await got, "still here");
  a.close();
});

test("the same uuid on both sides is duplicate_uuid", async () => {
  const tk = token();
  const uuid = "6f1c8a52-3f0e-4d7b-9d7e-1a2b3c4d5e6f";
  const r = await Promise.allSettled([pair({ url: WS, token: tk, uuid }), pair({ url: WS, token: tk, uuid })]);
  for (const x of r) {
    assert.equal(x.status, "rejected");
    assert.equal(x.reason.code, "duplicate_uuid", x.reason.message);
  }
});

test("a bad URL is a TypeError, an unreachable relay is network", async () => {
  assert.throws(() => pair({ url: "127.0.0.1:8443", token: "t" }), TypeError);
  assert.throws(() => pair({ url: WS }), TypeError);
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const port = srv.address().port;
  await new Promise((r) => srv.close(r));
  await rejectsWith(pair({ url: `ws://127.0.0.1:${port}/`, token: token() }), "network");
});

test("backpressure: drained() bounds what waits, every byte arrives", async () => {
  const tk = token();
  const [a, b] = await Promise.all([pair({ url: WS, token: tk }), pair({ url: WS, token: tk })]);
  const chunk = new Uint8Array(64 << 10).fill(7);
  const total = 64;
  let got = 0;
  const done = new Promise((resolve) => {
    b.onmessage = (ev) => {
      got += ev.data.byteLength;
      if (got === total * chunk.length) resolve();
    };
  });
  let most = 0;
  for (let i = 0; i < total; i++) {
    await a.drained(256 << 10);
    a.send(chunk);
    most = Math.max(most, a.bufferedAmount);
  }
  await done;
  assert.ok(most <= (256 << 10) + chunk.length, `bufferedAmount reached ${most}`);
  a.close();
});

test("a raw TCP partner: text while UTF-8, then binary; bytes() joins them", { skip: !TCP }, async () => {
  const tk = token();
  const [host, port] = TCP.split(":");
  const sock = net.connect(Number(port), host);
  let buf = "";
  const established = new Promise((resolve, reject) => {
    sock.on("data", (d) => {
      buf += d.toString("latin1");
      if (buf.includes("RemoteProxy.TunnelEstablished")) resolve();
    });
    sock.on("error", reject);
  });
  await new Promise((r) => sock.once("connect", r));
  sock.write(JSON.stringify({ id: 1, method: "Authentication.Authenticate", params: { uuid: "0b8e6a3e-1111-4222-8333-444455556666", name: "tcp", token: tk } }) + "\n");
  const wsSide = pair({ url: WS, token: tk, name: "browser" });
  await established;
  const t = await wsSide;
  assert.equal(t.peer.name, "tcp");
  const parts = [];
  const want = Buffer.concat([Buffer.from("text first, "), Buffer.from([0xff, 0x00, 0x80])]);
  const all = new Promise((resolve) => {
    let len = 0;
    t.onmessage = (ev) => {
      parts.push(ev.data);
      len += bytes(ev.data).length;
      if (len === want.length) resolve();
    };
  });
  sock.write(want.subarray(0, 12));
  await new Promise((r) => setTimeout(r, 50));
  sock.write(want.subarray(12));
  await all;
  assert.equal(typeof parts[0], "string");
  assert.ok(parts[parts.length - 1] instanceof ArrayBuffer);
  assert.deepEqual(Buffer.concat(parts.map((p) => Buffer.from(bytes(p)))), want);
  const echoed = new Promise((r) => sock.once("data", r));
  t.send("from ws");
  assert.equal((await echoed).toString(), "from ws");
  sock.end();
  assert.equal((await t.closed).error.code, "partner_left");
});

test("reach: a TunnelProxy client of a registered server", { skip: !TP_SERVER }, async () => {
  const t = await reach({ url: WS, serverUuid: TP_SERVER, name: "js-tp" });
  const got = next(t);
  t.send("ping over tunnelproxy");
  assert.equal(new TextDecoder().decode(bytes(await got)), "ping over tunnelproxy");
  t.close();
  await rejectsWith(reach({ url: WS, serverUuid: "7a7a7a7a-0000-4000-8000-000000000001" }), "server_not_found");
});

test("VERSION is the package's version", async () => {
  const { readFile } = await import("node:fs/promises");
  const pkg = JSON.parse(await readFile(new URL("../package.json", import.meta.url)));
  assert.equal(VERSION, pkg.version);
});

test("urlToken: the token in the WebSocket URL pairs with a JSON-RPC client; a refused one fails", async () => {
  const tk = token();
  let waited = false;
  const [a, b] = await Promise.all([
    pair({ url: WS, token: tk, nonce: "u", name: "in-url", urlToken: true, onWaiting: () => (waited = true) }),
    pair({ url: WS, token: tk, nonce: "u", name: "rpc" }),
  ]);
  assert.equal(a.peer.name, "rpc");
  assert.equal(b.peer.name, "in-url");
  assert.ok(waited);
  const got = next(b);
  a.send("via the URL");
  assert.equal(await got, "via the URL");
  a.close();
  await rejectsWith(pair({ url: WS, token: "bad-" + tk, urlToken: true }), "network");
});

test("subscribe: events pushed to a subscription, over JSON-RPC and with the token in the URL", { skip: !process.env.MEETPOINT_HTTP }, async () => {
  const [a, b] = await Promise.all([
    subscribe({ url: WS, token: token(), channels: ["dev-1", "all"] }),
    subscribe({ url: WS, token: token(), channels: ["dev-1"], urlToken: true }),
  ]);
  assert.deepEqual(a.channels, ["dev-1", "all"]);
  const got = (s) => new Promise((resolve) => s.addEventListener("event", (ev) => resolve(ev.detail), { once: true }));
  const ga = got(a), gb = got(b);
  const resp = await fetch(process.env.MEETPOINT_HTTP + "/v1/events/dev-1", {
    method: "POST",
    headers: { Authorization: "Bearer " + process.env.MEETPOINT_ADMIN },
    body: JSON.stringify({ connect: { token: "T", nonce: "N" } }),
  });
  assert.equal(resp.status, 202);
  for (const d of [await ga, await gb]) {
    assert.equal(d.channel, "dev-1");
    assert.deepEqual(d.data, { connect: { token: "T", nonce: "N" } });
  }
  a.close();
  b.close();
  await rejectsWith(subscribe({ url: WS, token: "bad-" + token(), channels: ["x"] }), "auth_failed");
  await rejectsWith(subscribe({ url: WS, token: "bad-" + token(), channels: ["x"], urlToken: true }), "network");
});
