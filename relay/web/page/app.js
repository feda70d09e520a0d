// The relay page: live status and the "try it" panel (two tabs pair with a
// token, exchange messages and dropped files). Uses only /meetpoint.js.
import { pair } from "/meetpoint.js";

const $ = (id) => document.getElementById(id);
const wsURL = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/";
const CHUNK = 64 << 10;
for (const el of document.querySelectorAll(".ws-url")) el.textContent = wsURL;

// Status, refreshed every 2 s.
function fmtUptime(s) {
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return (d ? d + "d" : "") + (d || h ? h + "h" : "") + (d || h || m ? m + "m" : "") + (s % 60) + "s";
}
let aloneS = Number($("alone").textContent) || 8;
async function refresh() {
  try {
    const st = await (await fetch("/status.json", { cache: "no-store" })).json();
    $("ready").textContent = st.state;
    $("tunnels").textContent = st.tunnels;
    $("connections").textContent = st.connections;
    $("tunnels-total").textContent = st.tunnels_total;
    $("uptime").textContent = fmtUptime(st.uptime_s);
    $("version").textContent = st.version;
    aloneS = st.alone_timeout_s;
    $("alone").textContent = aloneS;
  } catch (_) {
    $("ready").textContent = "unreachable";
  }
}
refresh();
setInterval(refresh, 2000);

// Token: from #token=… (the partner link carries it), else a random one.
function randomToken() {
  const b = crypto.getRandomValues(new Uint8Array(8));
  return "demo-" + [...b].map((x) => x.toString(36).padStart(2, "0")).join("").slice(0, 10);
}
const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
$("token").value = fromHash || randomToken();
const updateLink = () => ($("partner-link").href = location.pathname + "#token=" + encodeURIComponent($("token").value));
updateLink();
$("token").addEventListener("input", updateLink);

function setState(text, cls) {
  $("state").textContent = text;
  $("state").className = cls || "";
}
function log(text, cls, node) {
  const li = document.createElement("li");
  li.textContent = text;
  if (cls) li.className = cls;
  if (node) li.append(" ", node);
  $("log").append(li);
  return li;
}

let tunnel = null;
let incoming = null; // the file being received: {name, size, parts, got}
let fileURLs = []; // blob URLs of the received files linked from the log: revoked when it is cleared

const reasons = {
  partner_left: "the other tab left",
  no_partner: () => `no partner arrived within ${aloneS} s (the relay's alone timeout)`,
  tunnel_exists: "two tabs already use this token: pick another",
  auth_failed: "the relay refused the token",
  server_shutdown: "the relay is shutting down",
  closed: "you left",
};
const why = (err) => {
  const r = err && reasons[err.code];
  return typeof r === "function" ? r() : r || (err ? err.message : "closed");
};

$("pair-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (tunnel) return;
  $("pair").disabled = true;
  setState("connecting…", "wait");
  try {
    tunnel = await pair({
      url: wsURL,
      token: $("token").value,
      name: "tab " + Math.random().toString(36).slice(2, 6),
      onWaiting: () => setState(`waiting for a partner (up to ${aloneS} s): open the partner tab`, "wait"),
    });
  } catch (err) {
    setState("not paired: " + why(err), "bad");
    $("pair").disabled = false;
    return;
  }
  setState("paired with " + tunnel.peer.name, "ok");
  $("session").hidden = false;
  fileURLs.forEach((u) => URL.revokeObjectURL(u));
  fileURLs = [];
  $("log").replaceChildren();
  tunnel.onmessage = (e) => receive(e.data);
  tunnel.addEventListener("close", (e) => {
    const d = e.detail;
    setState(`ended: ${why(d.error)} (close ${d.code}${d.wasClean ? ", clean" : ", not clean"})`, d.error.code === "closed" ? "" : "bad");
    $("state").dataset.code = d.error.code;
    $("state").dataset.clean = String(d.wasClean);
    $("session").hidden = true;
    $("pair").disabled = false;
    tunnel = null;
    if (incoming) { // the partner's file ends with its tunnel: a next one starts afresh
      log(`them: ${incoming.name} interrupted (${incoming.got} of ${incoming.size} bytes)`, "sys");
      incoming = null;
    }
  });
});

function receive(data) {
  if (typeof data === "string") {
    // The page's own messages are {t: "msg", text} and {t: "file", …};
    // any other text (another client's, "42", "null") is shown as sent.
    let m = null;
    try { m = JSON.parse(data); } catch (_) {}
    if (!m || typeof m !== "object" || (m.t !== "msg" && m.t !== "file")) m = { t: "msg", text: data };
    if (m.t === "file") {
      incoming = { name: String(m.name), size: Number(m.size), parts: [], got: 0 };
      if (incoming.size === 0) fileDone();
    } else {
      log("them: " + m.text, "them");
    }
    return;
  }
  if (!incoming) return log("them: " + data.byteLength + " bytes of binary", "them");
  incoming.parts.push(data);
  incoming.got += data.byteLength;
  if (incoming.got >= incoming.size) fileDone();
}

function fileDone() {
  const f = incoming;
  incoming = null;
  // Bytes only, whatever type the partner claims: a text/html (or SVG…)
  // blob opened in a tab of its own would run the partner's script in this
  // page's origin.
  const blob = new Blob(f.parts, { type: "application/octet-stream" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  fileURLs.push(a.href);
  a.download = f.name;
  a.textContent = "download";
  a.className = "received-file";
  a.dataset.size = String(blob.size);
  log(`them: a file, ${f.name} (${blob.size} bytes)`, "them", a);
}

$("send-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("message").value;
  if (!tunnel || text === "") return;
  tunnel.send(JSON.stringify({ t: "msg", text }));
  log("me: " + text, "me");
  $("message").value = "";
});
$("leave").addEventListener("click", () => tunnel && tunnel.close());

async function sendFile(file) {
  if (!tunnel) return;
  const t = tunnel;
  const li = log(`me: sending ${file.name} (${file.size} bytes)…`, "me");
  t.send(JSON.stringify({ t: "file", name: file.name, size: file.size, type: file.type }));
  for (let off = 0; off < file.size; off += CHUNK) {
    await t.drained(4 * CHUNK); // keep at most a few chunks queued in the browser
    t.send(await file.slice(off, off + CHUNK).arrayBuffer());
  }
  li.textContent = `me: sent ${file.name} (${file.size} bytes)`;
  li.classList.add("sent-file");
}

// Files go one after another (their chunks must not interleave).
let sending = Promise.resolve();
const queueFile = (f) => (sending = sending.then(() => sendFile(f)).catch((e) => log("not sent: " + e.message, "sys")));

const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => {
  ev.preventDefault();
  drop.classList.remove("over");
  for (const f of ev.dataTransfer.files) queueFile(f);
});
$("file").addEventListener("change", (ev) => {
  for (const f of ev.target.files) queueFile(f);
  ev.target.value = "";
});
