// reledger console: every request signed in this browser with the party's key (WebCrypto Ed25519,
// non-extractable), every proof checked here (docs/CONSOLE.md). No library, no network but the server.
"use strict";

// ---------------------------------------------------------------------------------------------
// bytes
const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", {fatal: true});
const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const unhex = (s) => {
  if (typeof s !== "string" || s.length % 2 || /[^0-9a-f]/.test(s)) throw new Error("not lowercase hex");
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(i * 2, 2), 16);
  return out;
};
const b64 = (b) => { let s = ""; for (const x of b) s += String.fromCharCode(x); return btoa(s); };
const unb64 = (s) => { const t = atob(s); const out = new Uint8Array(t.length); for (let i = 0; i < t.length; i++) out[i] = t.charCodeAt(i); return out; };
const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let i = 0; for (const p of parts) { out.set(p, i); i += p.length; } return out;
};
const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const sha256 = async (b) => new Uint8Array(await crypto.subtle.digest("SHA-256", b));

// ---------------------------------------------------------------------------------------------
// canonical msgpack (docs/FORMAT.md 1): the shortest form, map keys sorted by their UTF-8 bytes
function cmpBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}
function packInto(out, v) {
  const u8 = (...xs) => out.push(...xs);
  const be = (n, w) => { const r = []; let x = BigInt(n); for (let i = 0; i < w; i++) { r.unshift(Number(x & 0xffn)); x >>= 8n; } return r; };
  if (v === null || v === undefined) return u8(0xc0);
  if (v === false) return u8(0xc2);
  if (v === true) return u8(0xc3);
  if (typeof v === "number" || typeof v === "bigint") {
    if (typeof v === "number" && !Number.isSafeInteger(v)) throw new Error("no floats in canonical msgpack");
    const n = BigInt(v);
    if (n >= 0n) {
      if (n < 128n) return u8(Number(n));
      if (n < 256n) return u8(0xcc, Number(n));
      if (n < 65536n) return u8(0xcd, ...be(n, 2));
      if (n < 4294967296n) return u8(0xce, ...be(n, 4));
      return u8(0xcf, ...be(n, 8));
    }
    if (n >= -32n) return u8(Number(n & 0xffn));
    if (n >= -128n) return u8(0xd0, Number(n & 0xffn));
    if (n >= -32768n) return u8(0xd1, ...be(n & 0xffffn, 2));
    if (n >= -2147483648n) return u8(0xd2, ...be(n & 0xffffffffn, 4));
    return u8(0xd3, ...be(n & 0xffffffffffffffffn, 8));
  }
  if (typeof v === "string") {
    const b = enc.encode(v), n = b.length;
    if (n < 32) u8(0xa0 | n); else if (n < 256) u8(0xd9, n); else if (n < 65536) u8(0xda, ...be(n, 2)); else u8(0xdb, ...be(n, 4));
    for (const x of b) out.push(x); return;
  }
  if (v instanceof Uint8Array) {
    const n = v.length;
    if (n < 256) u8(0xc4, n); else if (n < 65536) u8(0xc5, ...be(n, 2)); else u8(0xc6, ...be(n, 4));
    for (const x of v) out.push(x); return;
  }
  if (Array.isArray(v)) {
    const n = v.length;
    if (n < 16) u8(0x90 | n); else if (n < 65536) u8(0xdc, ...be(n, 2)); else u8(0xdd, ...be(n, 4));
    for (const x of v) packInto(out, x); return;
  }
  if (typeof v === "object") {
    const keys = Object.keys(v).map((k) => [enc.encode(k), k]).sort((a, b) => cmpBytes(a[0], b[0]));
    const n = keys.length;
    if (n < 16) u8(0x80 | n); else if (n < 65536) u8(0xde, ...be(n, 2)); else u8(0xdf, ...be(n, 4));
    for (const [, k] of keys) { packInto(out, k); packInto(out, v[k]); }
    return;
  }
  throw new Error("cannot encode " + typeof v);
}
function pack(v) { const out = []; packInto(out, v); return Uint8Array.from(out); }

// a decoder for what the ledger sends (envelopes, contents); strict: re-encoded, it must give the same bytes
function unpack(bytes) {
  let i = 0;
  const need = (n) => { if (i + n > bytes.length) throw new Error("truncated msgpack"); };
  const uint = (w) => { need(w); let n = 0n; for (let k = 0; k < w; k++) n = (n << 8n) | BigInt(bytes[i++]); return n; };
  const int = (w) => { const n = uint(w); const bits = BigInt(w * 8); return n >= (1n << (bits - 1n)) ? n - (1n << bits) : n; };
  const num = (n) => (n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n);
  const raw = (n) => { need(n); const b = bytes.slice(i, i + n); i += n; return b; };
  const str = (n) => dec.decode(raw(n));
  const arr = (n, depth) => { const a = []; for (let k = 0; k < n; k++) a.push(val(depth + 1)); return a; };
  const map = (n, depth) => {
    const m = {};
    for (let k = 0; k < n; k++) {
      const key = val(depth + 1);
      if (typeof key !== "string" || Object.prototype.hasOwnProperty.call(m, key)) throw new Error("bad map key");
      m[key] = val(depth + 1);
    }
    return m;
  };
  function val(depth) {
    if (depth > 33) throw new Error("nested too deep");
    need(1);
    const b = bytes[i++];
    if (b < 0x80) return b;
    if (b >= 0xe0) return b - 256;
    if ((b & 0xf0) === 0x80) return map(b & 0x0f, depth);
    if ((b & 0xf0) === 0x90) return arr(b & 0x0f, depth);
    if ((b & 0xe0) === 0xa0) return str(b & 0x1f);
    switch (b) {
      case 0xc0: return null; case 0xc2: return false; case 0xc3: return true;
      case 0xc4: return raw(Number(uint(1))); case 0xc5: return raw(Number(uint(2))); case 0xc6: return raw(Number(uint(4)));
      case 0xcc: return num(uint(1)); case 0xcd: return num(uint(2)); case 0xce: return num(uint(4)); case 0xcf: return num(uint(8));
      case 0xd0: return num(int(1)); case 0xd1: return num(int(2)); case 0xd2: return num(int(4)); case 0xd3: return num(int(8));
      case 0xd9: return str(Number(uint(1))); case 0xda: return str(Number(uint(2))); case 0xdb: return str(Number(uint(4)));
      case 0xdc: return arr(Number(uint(2)), depth); case 0xdd: return arr(Number(uint(4)), depth);
      case 0xde: return map(Number(uint(2)), depth); case 0xdf: return map(Number(uint(4)), depth);
      default: throw new Error("not canonical msgpack (byte 0x" + b.toString(16) + ")");
    }
  }
  const v = val(0);
  if (i !== bytes.length) throw new Error("bytes after the value");
  if (!equal(pack(v), bytes)) throw new Error("not the canonical encoding");
  return v;
}

// ---------------------------------------------------------------------------------------------
// Ed25519 in WebCrypto
const ED = {name: "Ed25519"};
const PKCS8_PREFIX = unhex("302e020100300506032b657004220420"); // RFC 8410 PrivateKeyInfo of a 32-byte seed
const REQUEST_TAG = enc.encode("reledger/v1/request\n");
const ENTRY_TAG = enc.encode("reledger/v1/entry\n");
const verifyEd = async (pub, sig, msg) => {
  const key = await crypto.subtle.importKey("raw", pub, ED, false, ["verify"]);
  return crypto.subtle.verify(ED, key, sig, msg);
};
const keyIdOf = async (pub) => hex((await sha256(pub)).slice(0, 8));

// the signed-in party: its key stays a non-extractable CryptoKey, the seed is wiped after import
const session = {party: null, keyId: null, key: null, publicKey: null, me: null, skew: 0};

async function importKeyFile(text) {
  let data;
  try { data = JSON.parse(text); } catch (e) { throw new Error(t("err_not_json")); }
  if (!data || data.format !== "reledger-key-v1") throw new Error(t("err_format"));
  if ((data.purpose || "entries") !== "entries") throw new Error(t("err_purpose"));
  if (typeof data.party !== "string" || !/^[A-Z0-9][A-Z0-9._-]{1,63}$/.test(data.party)) throw new Error(t("err_party"));
  const seed = unb64(data.private_key || "");
  if (seed.length !== 32) throw new Error(t("err_seed"));
  const pkcs8 = concat(PKCS8_PREFIX, seed);
  let key;
  try {
    key = await crypto.subtle.importKey("pkcs8", pkcs8, ED, false, ["sign"]);
  } catch (e) {
    throw new Error(t("err_webcrypto") + " (" + e.message + ")");
  } finally {
    seed.fill(0); pkcs8.fill(0); data.private_key = null;
  }
  const pub = unb64(data.public_key || "");
  if (pub.length !== 32) throw new Error(t("err_public"));
  // the private key must be the public key's: sign a probe, verify it with the public key
  const probe = crypto.getRandomValues(new Uint8Array(32));
  const sig = new Uint8Array(await crypto.subtle.sign(ED, key, probe));
  if (!(await verifyEd(pub, sig, probe))) throw new Error(t("err_mismatch"));
  const keyId = await keyIdOf(pub);
  if (data.key_id && data.key_id !== keyId) throw new Error(t("err_keyid"));
  return {party: data.party, keyId, key, publicKey: pub};
}

// ---------------------------------------------------------------------------------------------
// signed requests (docs/HTTP.md "Signed read requests"), byte for byte as commands/auth.py
function timestampNow() {
  const d = new Date(Date.now() + session.skew);
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}
function nonce() { return b64(crypto.getRandomValues(new Uint8Array(24))).replace(/\+/g, "-").replace(/\//g, "_"); }

async function requestMessage(method, path, party, keyId, ts, n, body) {
  return pack({body_sha256: await sha256(body), key_id: keyId, method: method.toUpperCase(), nonce: n,
               party, path, timestamp: ts});
}
async function signedHeaders(method, path, body = new Uint8Array()) {
  const ts = timestampNow(), n = nonce();
  const msg = await requestMessage(method, path, session.party, session.keyId, ts, n, body);
  const sig = new Uint8Array(await crypto.subtle.sign(ED, session.key, concat(REQUEST_TAG, msg)));
  return {"X-Reledger-Party": session.party, "X-Reledger-Key-Id": session.keyId, "X-Reledger-Timestamp": ts,
          "X-Reledger-Nonce": n, "X-Reledger-Signature": b64(sig)};
}

class Problem extends Error {
  constructor(status, p) { super(p.detail || ("HTTP " + status)); this.status = status; this.problem = p; }
}
// path: the path and query exactly as they go on the request line (values already percent-encoded)
async function api(path, {accept, raw, signal} = {}) {
  const headers = await signedHeaders("GET", path);
  if (accept) headers.Accept = accept;
  const resp = await fetch(path, {headers, signal, cache: "no-store"});
  if (!resp.ok) {
    let p; try { p = await resp.json(); } catch (e) { p = {detail: resp.statusText}; }
    throw new Problem(resp.status, p);
  }
  if (raw) return resp;
  const ct = resp.headers.get("content-type") || "";
  return ct.includes("json") ? resp.json() : resp.text();
}
const q = (params) => {
  const parts = Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => k + "=" + encodeURIComponent(v));
  return parts.length ? "?" + parts.join("&") : "";
};

// ---------------------------------------------------------------------------------------------
// proofs (docs/FORMAT.md 3.1, 5, 6.1)
function parseVkey(s) {
  const parts = (s || "").trim().split("+");
  if (parts.length !== 3 || !/^[0-9a-f]{8}$/.test(parts[1])) throw new Error(t("err_vkey"));
  const raw = unb64(parts[2]);
  if (raw.length !== 33 || raw[0] !== 1) throw new Error(t("err_vkey"));
  return {name: parts[0], keyHash: unhex(parts[1]), pub: raw.slice(1)};
}
async function verifyNote(note, vkeyText) {
  const vk = parseVkey(vkeyText);
  const expectHash = (await sha256(concat(enc.encode(vk.name), Uint8Array.of(0x0a, 0x01), vk.pub))).slice(0, 4);
  if (!equal(expectHash, vk.keyHash)) throw new Error(t("err_vkey"));
  const cut = note.lastIndexOf("\n\n");
  if (cut < 0) throw new Error("note: no signature block");
  const body = note.slice(0, cut + 1);
  const lines = note.slice(cut + 2).split("\n");
  if (lines.pop() !== "") throw new Error("note: does not end in a newline");
  let signed = false;
  const seen = new Set();
  for (const line of lines) {
    const m = /^\u2014 (\S+) ([A-Za-z0-9+/=]+)$/.exec(line);
    if (!m) throw new Error("note: a line is not a signature line");
    const blob = unb64(m[2]);
    const id = m[1] + " " + hex(blob.slice(0, 4));
    if (seen.has(id)) throw new Error("note: two signatures of one key");
    seen.add(id);
    if (m[1] === vk.name && equal(blob.slice(0, 4), vk.keyHash)) {
      if (blob.length !== 68 || !(await verifyEd(vk.pub, blob.slice(4), enc.encode(body)))) {
        throw new Error(t("err_note_sig"));
      }
      signed = true;
    }
  }
  if (!signed) throw new Error(t("err_note_unsigned"));
  const b = body.split("\n");
  if (b[0] !== vk.name || !/^(0|[1-9][0-9]*)$/.test(b[1])) throw new Error("note: bad checkpoint body");
  const root = unb64(b[2]);
  if (root.length !== 32) throw new Error("note: bad root");
  return {origin: b[0], size: Number(b[1]), root};
}
const nodeHash = (l, r) => sha256(concat(Uint8Array.of(1), l, r));
async function verifyInclusion(leafHash, index, size, proof, root) {
  if (index >= size) return false;
  let fn = index, sn = size - 1, r = leafHash;
  for (const p of proof) {
    if (p.length !== 32 || sn === 0) return false;
    if ((fn & 1) === 1 || fn === sn) {
      r = await nodeHash(p, r);
      if ((fn & 1) === 0) while ((fn & 1) === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  return sn === 0 && equal(r, root);
}

async function verifyConsistency(m, n, proof, r1, r2) {
  // RFC 9162 2.1.4.2 (docs/FORMAT.md 6.2), 0 < m <= n
  if (m <= 0 || m > n) return false;
  if (m === n) return proof.length === 0 && equal(r1, r2);
  if (!proof.length || proof.some((p) => p.length !== 32)) return false;
  if ((m & (m - 1)) === 0) proof = [r1, ...proof];
  let fn = m - 1, sn = n - 1;
  while ((fn & 1) === 1) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
  let fr = proof[0], sr = proof[0];
  for (const c of proof.slice(1)) {
    if (sn === 0) return false;
    if ((fn & 1) === 1 || fn === sn) {
      fr = await nodeHash(c, fr); sr = await nodeHash(c, sr);
      if ((fn & 1) === 0) while ((fn & 1) === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    } else {
      sr = await nodeHash(sr, c);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  return sn === 0 && equal(fr, r1) && equal(sr, r2);
}
// the page remembers the largest checkpoint it verified (per server) and holds every later one to
// it: a log that a checkpoint shows rewritten is refused, as an auditor's pinned trust does
const CP_KEY = () => "reledger-console-checkpoint:" + location.host;
async function checkAgainstRemembered(cp) {
  let prev = null;
  try { prev = JSON.parse(localStorage.getItem(CP_KEY()) || "null"); } catch (e) { prev = null; }
  if (prev && Number.isSafeInteger(prev.size) && typeof prev.root === "string" && prev.size > 0) {
    const [a, b] = prev.size <= cp.size ? [prev, {size: cp.size, root: hex(cp.root)}] : [{size: cp.size, root: hex(cp.root)}, prev];
    const c = a.size === b.size ? {proof: []} : await api("/v1/proofs/consistency" + q({first: a.size, second: b.size}));
    if (!(await verifyConsistency(a.size, b.size, c.proof.map(unhex), unhex(a.root), unhex(b.root)))) {
      throw new Error(tf("err_inconsistent", {a: a.size, b: b.size}));
    }
    cp.consistentWith = prev.size;
  }
  if (!prev || cp.size > prev.size) localStorage.setItem(CP_KEY(), JSON.stringify({size: cp.size, root: hex(cp.root)}));
  return cp;
}

// one entry: its hash, its signature under the registry's key, its inclusion in the signed checkpoint
async function checkEntry(chain, seq, expectHash, cp, depth = 0) {
  const out = {chain, seq, checks: []};
  const add = (name, ok, detail) => out.checks.push({name, ok, detail});
  const rec = await api(`/v1/chains/${encodeURIComponent(chain)}/entries/${seq}`);
  const envelope = unb64(rec.envelope);
  const h = await sha256(envelope);
  add("hash", expectHash ? hex(h) === expectHash : hex(h) === rec.entry_hash, hex(h));
  let env, content;
  try {
    env = unpack(envelope);
    content = unpack(env.entry);
  } catch (e) { add("format", false, e.message); return out; }
  out.content = content; out.index = rec.index; out.recorded_at = rec.recorded_at;
  add("chain", content.chain === chain && content.seq === seq, `${content.chain}:${content.seq}`);
  try {
    const key = await api(`/v1/console/keys/${content.key_id}` + q({chain, seq}));
    const pub = unb64(key.public_key);
    const idOk = (await keyIdOf(pub)) === content.key_id && key.party === chain;
    const sigOk = await verifyEd(pub, env.sig, concat(ENTRY_TAG, env.entry));
    out.key = key;
    add("signature", idOk && sigOk, `key ${content.key_id} (${key.party}, ${t("authorized_at")} ${key.authorized_at.chain}:${key.authorized_at.seq})`);
    // the key itself: the KeyAuthorized entry that registered it, checked like any entry (once)
    if (depth === 0 && key.authorized_at.chain) {
      try {
        const auth = await checkEntry(key.authorized_at.chain, key.authorized_at.seq, null, cp, 1);
        const b = (auth.content || {}).body || {};
        const same = auth.content && auth.content.type === "KeyAuthorized" && b.key_id === content.key_id &&
          b.party === chain && b.public_key instanceof Uint8Array && equal(b.public_key, pub) && auth.index === key.authorized_at.index;
        const authOk = same && auth.checks.every((c) => c.ok !== false);
        add("key", authOk === true && auth.checks.every((c) => c.ok === true) ? true : authOk ? null : false,
          `${key.authorized_at.chain}:${key.authorized_at.seq} (${t("index")} ${key.authorized_at.index}): ` +
          auth.checks.map((c) => `${t("check_" + c.name)} ${c.ok === true ? "✓" : c.ok === false ? "✗" : "…"}`).join(", "));
      } catch (e) {
        if (e.status === 403) add("key", null, t("not_yours"));
        else add("key", false, e.message);
      }
    }
  } catch (e) { add("signature", false, e.message); }
  if (!cp) { add("inclusion", false, t("no_checkpoint")); return out; }
  if (rec.index >= cp.size) { add("inclusion", null, t("not_covered").replace("{size}", cp.size)); return out; }
  try {
    const proof = await api("/v1/proofs/inclusion" + q({chain, seq, size: cp.size}));
    const leaf = pack({entry_hash: h, index: rec.index, recorded_at: proof.recorded_at});
    const leafHash = await sha256(concat(Uint8Array.of(0), leaf));
    const ok = proof.index === rec.index &&
      await verifyInclusion(leafHash, rec.index, cp.size, proof.proof.map(unhex), cp.root);
    add("inclusion", ok, `${t("leaf")} ${rec.index} / ${t("tree_size")} ${cp.size}, ${proof.proof.length} ${t("hashes")}`);
  } catch (e) { add("inclusion", false, e.message); }
  return out;
}
async function signedCheckpoint() {
  const vk = logKey();
  if (!vk) throw new Error(t("err_no_vkey"));
  let note;
  try { note = await api("/v1/checkpoint"); } catch (e) { if (e.status === 404) return null; throw e; }
  return checkAgainstRemembered(await verifyNote(note, vk));
}

// ---------------------------------------------------------------------------------------------
// words (en, zh-CN)
const WORDS = {
  en: {
    title: "reledger console", skip: "Skip to content", signin: "Sign in with your party's key",
    signin_help: "Choose your key file (reledger keygen). It is read in this browser only: the private key is imported into WebCrypto as non-extractable and never sent anywhere; every request is signed here.",
    keyfile: "Key file", signin_button: "Sign in", signout: "Sign out", time: "Point in time",
    as_of: "As of", valid_at: "Valid at", apply: "Apply", now: "Now",
    as_of_help: "what the ledger knew then (a log size or a record time)",
    valid_at_help: "the world on that date, as known now", live_feed: "Live", evidence: "Evidence", close: "Close",
    tab_quota: "Quota", tab_findings: "Findings", tab_timeline: "Timeline", tab_flow: "Lot trace",
    tab_report: "Monthly report", tab_chain: "My chain", tab_myfindings: "My findings", tab_settings: "Log key",
    reflects: "Reflects", log_size: "log size", checkpoint: "checkpoint", projections: "projections at", none: "none",
    year: "Year", level: "Level", nation: "National", group: "Group", enterprise: "Enterprise", category: "Category",
    holder: "Holder", show: "Show", allocated: "Allocated", used: "Used", remaining: "Remaining", issued: "Issued",
    percent: "% used", over: "over quota", monthly_figures: "Figures at each month's end", burn_title: "Quota burn-down", no_quota: "No quota lines you may read for this year at this point in time.", month: "Month", tonnes: "t REO",
    rule: "Rule", party: "Party", province: "Province", from: "From", to: "To", filter: "Filter", all: "all",
    index: "Log index", occurred: "Business time", recorded: "Recorded", code: "Code", message: "Finding",
    status: "Status", open: "open", resolved: "resolved", cure: "How to cure", open_evidence: "Evidence",
    findings_count: "{n} findings", findings_count_1: "{n} finding", no_findings: "No findings at this point in time.", shown_first: "showing the first {n}",
    seq: "Seq", type: "Type", facts: "Facts", load_more: "Load more", no_entries: "No entries at this point in time.",
    lot: "Lot", direction: "Direction", up: "upstream (sources)", down: "downstream (destinations)", trace: "Trace",
    graph_alt: "Flow graph of lot {lot}", edges: "Movements", src: "From", dst: "To", kind: "Kind", kg: "kg",
    report_build: "Build the report", report_due: "due", covered: "entries covered", download: "Download JSON",
    sign_submit: "Sign and submit", signed_ok: "Signed in this browser and appended", to_sign: "Entries to sign",
    only_own: "Only the party itself can sign its report.",
    vkey_label: "The log's checkpoint key (note verifier key)",
    vkey_help: "Checkpoints are verified in this page against this key. The server offered the keys below; an auditor pastes the key pinned in their trust file (reledger trust) instead of trusting the server.",
    save: "Save", saved: "Saved.", use: "Use",
    check_hash: "entry hash", check_format: "canonical envelope", check_chain: "chain and seq",
    check_signature: "party's signature (Ed25519)", check_key: "the key's KeyAuthorized entry (public key, signature, inclusion)", check_inclusion: "inclusion in the signed checkpoint (RFC 9162)",
    checkpoint_ok: "Checkpoint signed by the log's key", consistent_with: "consistent with the checkpoint of size {n} verified here before",
    err_inconsistent: "The checkpoint is NOT consistent with the one this page verified before (sizes {a} and {b}): the log was rewritten, or the server lies", verifying: "Verifying in this page...",
    ok: "verified", fail: "FAILED", pending: "not checked", no_checkpoint: "no signed checkpoint",
    not_covered: "not covered by the latest checkpoint (tree size {size}) yet",
    authorized_at: "authorized at", leaf: "leaf", tree_size: "tree size", hashes: "hashes",
    live_on: "live: log size {n}", live_off: "live stream closed, reconnecting", live_busy: "another console of this party is open: live updates paused",
    new_entries: "{n} new entries since this view (as of is pinned)", signed_in_as: "Signed in as",
    roles: "roles", err_not_json: "This file is not a reledger key file (not JSON).",
    err_format: "Not a reledger-key-v1 key file.", err_purpose: "This is a checkpoint or witness key: sign in with an entries key.",
    err_party: "The key file names no valid party.", err_seed: "The private key is not 32 bytes.",
    err_public: "The public key is not 32 bytes.", err_mismatch: "The private key does not match the public key.",
    err_keyid: "key_id does not match the key.", err_webcrypto: "This browser cannot import Ed25519 keys into WebCrypto",
    err_vkey: "Not a note verifier key (name+hash+key).", err_note_sig: "The checkpoint's signature does not verify.",
    err_note_unsigned: "The checkpoint is not signed by this key.", err_no_vkey: "Set the log's checkpoint key first (tab Log key).",
    cure_generic: "See docs/FINDINGS.md.", evidence_of: "Evidence of", entry: "Entry",
    resolved_by: "Resolved by", not_yours: "Not yours to read: the API refuses this entry to you, so it is not checked here", all_verified: "All checks passed", partly_verified: "No check failed; some could not run here (marked …)", some_failed: "Some checks failed",
  },
  zh: {
    title: "reledger 监管控制台", skip: "跳到内容", signin: "使用本单位密钥登录",
    signin_help: "选择密钥文件（reledger keygen 生成）。文件只在本浏览器中读取：私钥以不可导出方式导入 WebCrypto，绝不外传；每个请求都在本机签名。",
    keyfile: "密钥文件", signin_button: "登录", signout: "退出", time: "时间点",
    as_of: "截至（记录）", valid_at: "业务时点", apply: "应用", now: "最新",
    as_of_help: "当时账本所知（日志长度或记录时间）", valid_at_help: "按现在所知，该日期的实际状态",
    live_feed: "实时", evidence: "证据", close: "关闭",
    tab_quota: "指标", tab_findings: "违规发现", tab_timeline: "时间线", tab_flow: "批次追溯",
    tab_report: "月度报告", tab_chain: "本单位链", tab_myfindings: "本单位发现", tab_settings: "日志公钥",
    reflects: "数据反映", log_size: "日志长度", checkpoint: "检查点", projections: "投影位置", none: "无",
    year: "年度", level: "层级", nation: "全国", group: "集团", enterprise: "企业", category: "类别",
    holder: "持有者", show: "显示", allocated: "已分配", used: "已使用", remaining: "剩余", issued: "已下达",
    percent: "使用率", over: "超指标", monthly_figures: "各月末数据", burn_title: "总量控制指标消耗", no_quota: "该年度该时间点无您可查看的指标。", month: "月份", tonnes: "吨 REO",
    rule: "规则", party: "单位", province: "省份", from: "自", to: "至", filter: "筛选", all: "全部",
    index: "日志序号", occurred: "业务时间", recorded: "记录时间", code: "代码", message: "发现",
    status: "状态", open: "未解决", resolved: "已解决", cure: "整改方法", open_evidence: "证据",
    findings_count: "共 {n} 条发现", findings_count_1: "共 {n} 条发现", no_findings: "该时间点无违规发现。", shown_first: "显示前 {n} 条",
    seq: "序号", type: "类型", facts: "事实", load_more: "加载更多", no_entries: "该时间点无条目。",
    lot: "批次", direction: "方向", up: "上游（来源）", down: "下游（去向）", trace: "追溯",
    graph_alt: "批次 {lot} 的流向图", edges: "流转", src: "自", dst: "至", kind: "种类", kg: "千克",
    report_build: "生成报告", report_due: "截止", covered: "覆盖条目", download: "下载 JSON",
    sign_submit: "签名并提交", signed_ok: "已在本浏览器签名并追加", to_sign: "待签名条目",
    only_own: "只有本单位可以签署其报告。",
    vkey_label: "日志检查点公钥（签名注记验证公钥）",
    vkey_help: "本页面用此公钥验证检查点。下面是服务器提供的公钥；审计人员应粘贴其信任文件（reledger trust）中固定的公钥，而不是信任服务器。",
    save: "保存", saved: "已保存。", use: "使用",
    check_hash: "条目哈希", check_format: "规范信封", check_chain: "链与序号",
    check_signature: "单位签名（Ed25519）", check_key: "密钥授权条目（公钥、签名、包含证明）", check_inclusion: "包含于已签名检查点（RFC 9162）",
    checkpoint_ok: "检查点由日志公钥签名", consistent_with: "与此前在本页验证的大小为 {n} 的检查点一致",
    err_inconsistent: "检查点与本页此前验证的检查点不一致（大小 {a} 与 {b}）：日志被改写，或服务器作假", verifying: "正在本页面验证……",
    ok: "已验证", fail: "失败", pending: "未验证", no_checkpoint: "无已签名检查点",
    not_covered: "尚未被最新检查点（树大小 {size}）覆盖",
    authorized_at: "授权于", leaf: "叶", tree_size: "树大小", hashes: "个哈希",
    live_on: "实时：日志长度 {n}", live_off: "实时连接已关闭，正在重连", live_busy: "本单位另一控制台已打开：实时更新暂停",
    new_entries: "自本视图以来新增 {n} 条（已固定截至时间）", signed_in_as: "登录身份",
    roles: "角色", err_not_json: "此文件不是 reledger 密钥文件（非 JSON）。",
    err_format: "不是 reledger-key-v1 密钥文件。", err_purpose: "这是检查点或见证密钥：请使用条目签名密钥登录。",
    err_party: "密钥文件未指明有效单位。", err_seed: "私钥不是 32 字节。",
    err_public: "公钥不是 32 字节。", err_mismatch: "私钥与公钥不匹配。",
    err_keyid: "key_id 与密钥不符。", err_webcrypto: "此浏览器无法将 Ed25519 密钥导入 WebCrypto",
    err_vkey: "不是签名注记验证公钥（名称+哈希+公钥）。", err_note_sig: "检查点签名验证失败。",
    err_note_unsigned: "检查点未由此公钥签名。", err_no_vkey: "请先设置日志检查点公钥（“日志公钥”页）。",
    cure_generic: "见 docs/FINDINGS.md。", evidence_of: "证据：", entry: "条目",
    resolved_by: "解决于", not_yours: "无权读取：接口拒绝向您提供此条目，故本页未验证", all_verified: "全部验证通过", partly_verified: "没有验证失败；部分检查无法在此运行（标记为 …）", some_failed: "部分验证失败",
  },
};
// how each finding is cured (docs/FINDINGS.md, column "resolved"; tests/test_console.py holds them equal in codes)
const CURES = {
  DECLARED_REO_MISMATCH: ["Record a CorrectionRecorded of the entry with the REO that dry kg x TREO % gives.", "以 CorrectionRecorded 更正该条目，按干重 × TREO% 申报 REO。"],
  WRONG_REO_FACTOR: ["Record a correction of the MetalSmelted with the reference table's factor.", "以更正条目改用参考表中的折算系数。"],
  UNAUTHORIZED_ENTRY: ["Never cured: the entry counts in no projection; the regulator investigates.", "不可整改：该条目不计入任何投影，由监管部门调查。"],
  NOT_DESIGNATED: ["Record a correction of the output (it was not lawful); apply for the designation.", "更正该产出条目（无资质）；申请相应资质。"],
  ILLEGAL_SOURCE: ["Never cured: the lot's illegal share stays; stop using the lot and report it.", "不可整改：停止使用该批次并报告来源。"],
  RECYCLER_MINERAL_FEED: ["Never cured: recyclers may not take mineral product; return the lot.", "不可整改：综合利用企业不得接收矿产品，应退回。"],
  OVER_QUOTA: ["Cured when no business time stays over: a quota batch or sub-allocation dated earlier, or a correction of the output.", "当不再有任何时点超指标时解决：补下达更早日期的指标或更正产出条目。"],
  BATCHES_ABOVE_ANNUAL_TOTAL: ["The regulator reduces a batch (QuotaReduced) or approves a larger total.", "监管部门核减批次或批准更高的年度总量。"],
  SUBALLOCATION_ABOVE_BATCH: ["The group reduces its sub-allocations to what the batch gave it.", "集团将再分配核减至批次所给数量以内。"],
  SUBALLOCATION_TO_NON_MEMBER: ["Record the membership (GroupMembershipChanged) or withdraw the sub-allocation.", "登记集团成员关系或撤回该再分配。"],
  SUBALLOCATION_LATE: ["Not cured: sub-allocate within 10 working days next time.", "不可整改：今后应在 10 个工作日内再分配。"],
  PENALTY_CUT_NOT_APPLIED: ["Record the QuotaReduced of the penalty's cut for that year.", "为该年度处罚核减登记 QuotaReduced。"],
  NEGATIVE_STOCK: ["Cured when no time stays negative: record the missing receipt or production (dated earlier), or correct the shipment.", "当任何时点库存不再为负时解决：补录更早的入库或产出，或更正发货。"],
  STOCK_COUNT_DIFFERENCE: ["Not cured: explain the difference; record the missing movements.", "不可整改：说明差异并补录遗漏的流转。"],
  MASS_IMBALANCE: ["Correct the batch (losses or outputs) so that REO in = out + losses.", "更正该批次，使 REO 投入 = 产出 + 损耗。"],
  YIELD_ABOVE_100: ["Record the unrecorded feed, or correct the batch.", "补录未记录的投料或更正批次。"],
  YIELD_BELOW_BAND: ["Correct the batch, or explain the losses to the regulator.", "更正批次或向监管部门说明损耗。"],
  SHIPMENT_NOT_RECEIVED: ["The buyer records the TransferReceived (late receipts stay on record).", "买方登记 TransferReceived（迟到的收货仍会记录）。"],
  RECEIPT_MISMATCH: ["Correct the receipt or the shipment so that their lines agree.", "更正收货或发货，使明细一致。"],
  RECEIPT_WITHOUT_SHIPMENT: ["The seller records the shipment, or the receipt is corrected.", "卖方登记发货，或更正收货。"],
  RECEIPT_DUPLICATE: ["Correct the duplicate receipt (CorrectionRecorded DUPLICATE).", "以 CorrectionRecorded 更正重复收货。"],
  UNTRACEABLE_LOT: ["Record the lot's origin (mine, customs or scrap).", "登记批次来源（矿山、海关或废料）。"],
  REPORT_MISSING: ["Submit the month's MonthlyFlowReportSubmitted (tab Monthly report); it then shows as REPORT_LATE.", "提交该月 MonthlyFlowReportSubmitted（“月度报告”页）；随后记为迟报。"],
  REPORT_LATE: ["Not cured: submit by the 10th of the next month.", "不可整改：应在次月 10 日前提交。"],
  REPORT_DIGEST_MISMATCH: ["Submit the report again with the digest of the covered entries (the console builds it).", "按所覆盖条目的摘要重新提交报告（控制台可生成）。"],
  FALSE_REPORT: ["Submit a report with the totals the ledger shows (the console builds it from the ledger).", "按账本数据重新提交报告（控制台据账本生成）。"],
  BACKDATED: ["Not cured: record entries within 15 days (or by the month's report deadline).", "不可整改：应在 15 天内（或当月报告截止前）记录。"],
  FUTURE_DATED: ["Correct the entry's business time.", "更正该条目的业务时间。"],
  EXPORT_WITHOUT_LICENCE: ["Not cured by an entry: present a licence valid on the export date to the regulator.", "不能以条目整改：向监管部门出示出口日有效的许可证。"],
  UNREADABLE_ENTRY: ["Correct the entry with a readable one.", "以可读条目更正。"],
};

let lang = localStorage.getItem("reledger-console-lang") || ((navigator.language || "").startsWith("zh") ? "zh" : "en");
function t(k) { return (WORDS[lang] && WORDS[lang][k]) || WORDS.en[k] || k; }
function tf(k, vars) { let s = t(k); for (const [a, b] of Object.entries(vars)) s = s.replace("{" + a + "}", b); return s; }
function cure(code) { const c = CURES[code]; return c ? c[lang === "zh" ? 1 : 0] : t("cure_generic"); }
function applyWords() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.title = t("title");
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  $("#lang").textContent = lang === "zh" ? "English" : "中文";
}

// ---------------------------------------------------------------------------------------------
// DOM helpers (text only: nothing from the server becomes markup)
const $ = (s, root = document) => root.querySelector(s);
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}
const SVGNS = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : String(c));
  return el;
}
function table(headers, rows, caption) {
  return h("div", {class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption || headers.join(", ")},
    h("table", {}, caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", {scope: "col"}, x)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c)))))));
}
function field(label, control) { const id = control.id || ("f" + Math.random().toString(36).slice(2)); control.id = id; return h("label", {for: id, class: "field"}, h("span", {}, label), control); }
function select(options, value) {
  const el = h("select", {});
  for (const [v, label] of options) { const o = h("option", {value: v}, label); if (v === value) o.selected = true; el.append(o); }
  return el;
}
function showError(where, e) { where.replaceChildren(h("p", {class: "error", role: "alert"}, e.message || String(e))); }
function reflectsLine(r, extra) {
  if (!r) return h("p", {class: "reflects"});
  const cp = r.checkpoint ? `${r.checkpoint.size} (${r.checkpoint.root.slice(0, 16)}…)` : t("none");
  const parts = [`${t("reflects")}: ${t("log_size")} ${r.log_size}`];
  if (r.projections_position !== undefined) parts.push(`${t("projections")} ${r.projections_position}`);
  parts.push(`${t("checkpoint")} ${cp}`);
  if (state.as_of) parts.push(`${t("as_of")} ${state.as_of}`);
  if (state.valid_at) parts.push(`${t("valid_at")} ${state.valid_at}`);
  if (extra) parts.push(extra);
  return h("p", {class: "reflects", "data-testid": "reflects"}, parts.join(" · "));
}
const fmtT = (x) => { const n = Number(x); return Number.isFinite(n) ? n.toLocaleString(lang === "zh" ? "zh-CN" : "en", {maximumFractionDigits: 3}) : String(x); };

// ---------------------------------------------------------------------------------------------
// state: the point in time, the current view
const state = {as_of: "", valid_at: "", view: null, pinnedSince: 0, live: null, parties: []};
const point = () => ({as_of: state.as_of, valid_at: state.valid_at});
function logKey() { return localStorage.getItem("reledger-console-vkey:" + location.host) || ""; }

const VIEWS = {};
function tabsFor() {
  if (session.me.reads_all) return ["quota", "findings", "timeline", "flow", "report", "settings"];
  return ["chain", "myfindings", "report", "quota", "flow", "settings"];
}
function renderTabs() {
  // the ARIA tabs pattern: Tab reaches the tabs, arrow keys (Home, End) move between them
  const nav = $("#tabs"), views = tabsFor();
  const ids = Array.from(nav.children, (b) => b.id).join(" ");
  if (ids === views.map((v) => "tab-" + v).join(" ")) {  // the same tabs: update them, keep the focus
    for (const b of nav.children) {
      const v = b.id.slice(4);
      b.setAttribute("aria-selected", String(state.view === v));
      b.textContent = t("tab_" + v);
    }
    $("#view").setAttribute("aria-labelledby", "tab-" + state.view);
    return;
  }
  nav.replaceChildren(...views.map((v, i) => h("button", {type: "button", role: "tab", id: "tab-" + v,
    "aria-selected": String(state.view === v), "aria-controls": "view", onclick: () => show(v),
    onkeydown: (ev) => {
      const j = {ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: views.length - 1}[ev.key];
      if (j === undefined) return;
      ev.preventDefault();
      const next = views[(j + views.length) % views.length];
      $("#tab-" + next).focus();
      show(next);
    }}, t("tab_" + v))));
  $("#view").setAttribute("aria-labelledby", "tab-" + state.view);
}
async function show(view) {
  // each view is drawn apart and shown only if it is still the one asked for last
  const gen = state.gen = (state.gen || 0) + 1;
  state.view = view;
  renderTabs();
  const root = $("#view"), draft = h("div", {});
  root.setAttribute("aria-busy", "true");
  if (!root.firstChild) root.append(h("p", {class: "help"}, "…"));
  try { await VIEWS[view](draft); } catch (e) { showError(draft, e); }
  if (gen !== state.gen) return;
  // a redraw (a live update) keeps the keyboard's place where the control is still there
  const focused = root.contains(document.activeElement) ? document.activeElement.id : "";
  root.replaceChildren(...draft.childNodes);
  if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
  root.removeAttribute("aria-busy");
}
// a live redraw at most every REFRESH_MS, whatever the rate of appends (the server's load in mind)
const REFRESH_MS = 3000;
let refreshTimer = null, lastRefresh = 0;
function refreshSoon() {
  if (refreshTimer) return;
  const wait = Math.max(400, lastRefresh + REFRESH_MS - Date.now());
  refreshTimer = setTimeout(() => {
    refreshTimer = null; lastRefresh = Date.now();
    if (state.view && VIEWS[state.view].live && !$("#evidence").open) VIEWS[state.view].live($("#view"));
  }, wait);
}

// --- quota: burn-down for a year ---------------------------------------------------------------
const monthEnds = (year) => Array.from({length: 12}, (_, m) => {
  const d = new Date(Date.UTC(year, m + 1, 0));
  return d.toISOString().slice(0, 10);
});
VIEWS.quota = async function (root) {
  const years = session.me.quota_years || [];
  const year = state.year || session.me.quota_year || years[1] || new Date().getUTCFullYear();
  const now = await api("/v1/quota" + q({year, ...point()}));
  const yearInput = h("input", {type: "number", min: String(years[0] || 2000), max: String(years[1] || 2100), value: String(year), id: "q-year"});
  const levels = [];
  if (now.nation.length) levels.push(["nation", t("nation")]);
  if (now.groups.length) levels.push(["group", t("group")]);
  if (now.enterprises.length) levels.push(["enterprise", t("enterprise")]);
  const sel = state.quotaSel && levels.some((l) => l[0] === state.quotaSel.level) ? state.quotaSel : {level: (levels[0] || ["nation"])[0], line: 0};
  const lines = (lvl) => (lvl === "nation" ? now.nation.map((x) => [x.category, x])
    : lvl === "group" ? now.groups.map((x) => [x.group + " · " + x.category, x])
    : now.enterprises.map((x) => [x.party + " · " + x.category, x]));
  const levelSel = select(levels, sel.level); levelSel.id = "q-level";
  const lineSel = select(lines(sel.level).map(([label], i) => [String(i), label]), String(sel.line)); lineSel.id = "q-line";
  levelSel.addEventListener("change", () => { state.quotaSel = {level: levelSel.value, line: 0}; show("quota"); });
  lineSel.addEventListener("change", () => { state.quotaSel = {level: levelSel.value, line: Number(lineSel.value)}; show("quota"); });
  const form = h("form", {class: "row", onsubmit: (ev) => { ev.preventDefault(); state.year = Number(yearInput.value); show("quota"); }},
    field(t("year"), yearInput), h("button", {type: "submit"}, t("show")), field(t("level"), levelSel), field(t("holder"), lineSel));
  const chart = h("figure", {class: "chart", "data-testid": "burndown"}, h("p", {class: "help"}, "…"));
  const ls = lines(sel.level);
  const chosen = ls[sel.line] ? ls[sel.line][1] : null;
  root.replaceChildren(h("h2", {}, `${t("burn_title")} ${year}`), reflectsLine(now.reflects), form, chart, quotaTables(now));
  if (chosen) await drawBurndown(chart, year, sel.level, chosen);
  else chart.replaceChildren(h("p", {class: "help"}, t("no_quota")));
};
VIEWS.quota.live = (root) => { if (!state.as_of) show("quota"); };
function quotaTables(now) {
  const pct = (x) => h("span", {class: x.over ? "bad" : ""}, x.percent_used + " %" + (x.over ? " · " + t("over") : ""));
  const out = h("div", {});
  if (now.nation.length) out.append(h("h3", {}, t("nation")), table([t("category"), t("issued"), t("used"), t("remaining"), t("percent")],
    now.nation.map((x) => [x.category, fmtT(x.issued_t), fmtT(x.used_t), fmtT(x.remaining_t), pct(x)])));
  if (now.groups.length) out.append(h("h3", {}, t("group")), table([t("group"), t("category"), t("issued"), t("used"), t("remaining"), t("percent")],
    now.groups.map((x) => [x.group, x.category, fmtT(x.issued_t), fmtT(x.used_t), fmtT(x.remaining_t), pct(x)])));
  if (now.enterprises.length) out.append(h("h3", {}, t("enterprise")), table([t("party"), t("category"), t("allocated"), t("used"), t("remaining"), t("percent")],
    now.enterprises.map((x) => [x.party, x.category, fmtT(x.allocated_t), fmtT(x.used_t), fmtT(x.remaining_t), pct(x)])));
  return out;
}
async function drawBurndown(fig, year, level, line) {
  // the same line at the end of every month (valid at), as the ledger knows it (as of)
  let ends = monthEnds(year);
  if (state.valid_at) ends = ends.filter((d) => d <= state.valid_at.slice(0, 10));
  const match = (ans) => {
    const list = level === "nation" ? ans.nation : level === "group" ? ans.groups : ans.enterprises;
    return list.find((x) => x.category === line.category && (level === "nation" || (level === "group" ? x.group === line.group : x.party === line.party)));
  };
  const answers = await Promise.all(ends.map((d) => api("/v1/quota" + q({year, as_of: state.as_of, valid_at: d}))));
  const pts = answers.map((a, i) => {
    const x = match(a) || {};
    const alloc = Number(level === "enterprise" ? x.allocated_t || 0 : (Number(x.issued_t || 0) - Number(x.reduced_t || 0)));
    return {month: ends[i].slice(0, 7), alloc, used: Number(x.used_t || 0), remaining: alloc - Number(x.used_t || 0)};
  });
  const W = 760, H = 300, L = 70, R = 20, T = 20, B = 40;
  const max = Math.max(1, ...pts.map((p) => Math.max(p.alloc, p.used)));
  const X = (i) => L + (i + 0.5) * (W - L - R) / 12;
  const Y = (v) => T + (H - T - B) * (1 - v / max);
  const svg = s("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "bd-title bd-desc", class: "burndown"});
  const title = `${t("burn_title")}: ${level === "nation" ? t("nation") : level === "group" ? line.group : line.party} · ${line.category} · ${year}`;
  svg.append(s("title", {id: "bd-title"}, title));
  const last = pts[pts.length - 1] || {alloc: 0, used: 0, remaining: 0};
  svg.append(s("desc", {id: "bd-desc"}, `${t("allocated")} ${fmtT(last.alloc)} ${t("tonnes")}, ${t("used")} ${fmtT(last.used)}, ${t("remaining")} ${fmtT(last.remaining)}`));
  for (let k = 0; k <= 4; k++) {
    const v = max * k / 4;
    svg.append(s("line", {x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: "grid"}));
    svg.append(s("text", {x: L - 6, y: Y(v) + 4, "text-anchor": "end", class: "axis"}, fmtT(Math.round(v))));
  }
  pts.forEach((p, i) => svg.append(s("text", {x: X(i), y: H - B + 18, "text-anchor": "middle", class: "axis"}, p.month.slice(5))));
  svg.append(s("text", {x: 8, y: 14, class: "axis"}, t("tonnes")));
  const path = (key) => pts.map((p, i) => (i ? "L" : "M") + X(i).toFixed(1) + " " + Y(Math.max(0, p[key])).toFixed(1)).join(" ");
  const step = pts.map((p, i) => (i ? `H${X(i).toFixed(1)} V${Y(p.alloc).toFixed(1)}` : `M${X(0).toFixed(1)} ${Y(p.alloc).toFixed(1)}`)).join(" ");
  svg.append(s("path", {d: step, class: "alloc"}));
  svg.append(s("path", {d: path("remaining"), class: "remaining"}));
  svg.append(s("path", {d: path("used"), class: "used"}));
  pts.forEach((p, i) => { if (p.used > p.alloc) svg.append(s("circle", {cx: X(i), cy: Y(p.used), r: 5, class: "overdot"}, s("title", {}, t("over")))); });
  const legend = h("ul", {class: "legend"},
    h("li", {class: "k-alloc"}, t("allocated")), h("li", {class: "k-used"}, t("used")), h("li", {class: "k-remaining"}, t("remaining")));
  fig.replaceChildren(svg, legend, h("figcaption", {}, title),
    h("details", {}, h("summary", {}, t("monthly_figures")), table([t("month"), t("allocated"), t("used"), t("remaining")],
      pts.map((p) => [p.month, fmtT(p.alloc), fmtT(p.used), fmtT(p.remaining)]))));
}

// --- findings -----------------------------------------------------------------------------------
const MAX_ROWS = 500;
const FINDINGS_PAGE = 1000;  // findings a request (the server's default page; at most 10,000)
async function findingsView(root, own) {
  const f = state.ff || (state.ff = {rule: "", party: "", province: "", from: "", to: ""});
  const params = {rule: f.rule, party: own ? "" : f.party, ...point()};
  const provinces = new Map(state.parties.map((p) => [p.party, p.province]));
  const keep = (x) => (!f.province || provinces.get(x.party) === f.province)
    && (!f.from || x.occurred_at.slice(0, 10) >= f.from) && (!f.to || x.occurred_at.slice(0, 10) <= f.to);
  // a keyset page at a time (limit, after = the page before's next), all at the first page's
  // log size, until more than MAX_ROWS match the filters or there is no next page
  const ans = await api("/v1/findings" + q({...params, limit: FINDINGS_PAGE}));
  const list = ans.findings.filter(keep);
  let next = ans.next;
  while (next !== null && next !== undefined && list.length <= MAX_ROWS) {
    const more = await api("/v1/findings" + q({...params, as_of: ans.as_of_size, limit: FINDINGS_PAGE, after: next}));
    list.push(...more.findings.filter(keep));
    next = more.next;
  }
  const partial = next !== null && next !== undefined;  // more findings than were read
  const rules = Object.entries(session.me.rules || {});
  const ruleSel = select([["", t("all")], ...rules.map(([r, text]) => [r, text.length > 60 ? text.slice(0, 58) + "…" : text])], f.rule); ruleSel.id = "f-rule";
  const partySel = select([["", t("all")], ...state.parties.map((p) => [p.party, `${p.party} ${p.name || ""}`])], f.party); partySel.id = "f-party";
  const provs = [...new Set(state.parties.map((p) => p.province).filter(Boolean))].sort();
  const provSel = select([["", t("all")], ...provs.map((p) => [p, p])], f.province); provSel.id = "f-province";
  const from = h("input", {type: "date", value: f.from, id: "f-from"}), to = h("input", {type: "date", value: f.to, id: "f-to"});
  const form = h("form", {class: "row", onsubmit: (ev) => {
    ev.preventDefault();
    state.ff = {rule: ruleSel.value, party: partySel.value, province: provSel.value, from: from.value, to: to.value};
    show(state.view);
  }}, field(t("rule"), ruleSel), own ? null : field(t("party"), partySel), own ? null : field(t("province"), provSel),
    field(t("from"), from), field(t("to"), to), h("button", {type: "submit"}, t("filter")));
  const shown = list.slice(0, MAX_ROWS);
  const headers = [t("index"), t("occurred"), t("code"), t("party"), t("message"), t("status")];
  if (own) headers.push(t("cure"));
  headers.push(t("evidence"));
  const rows = shown.map((x) => {
    const r = [String(x.index), x.occurred_at, h("code", {}, x.code), x.party, x.message,
      x.resolved ? h("span", {class: "good"}, `${t("resolved")} (${x.resolved.index})`) : h("span", {class: "bad"}, t("open"))];
    if (own) r.push(cure(x.code));
    r.push(h("button", {type: "button", class: "small", "data-finding": String(x.index), onclick: () => openEvidence(x)}, t("open_evidence")));
    return r;
  });
  if (!rows.length) rows.push([t("no_findings"), "", "", "", "", "", ...(own ? [""] : []), ""]);
  root.replaceChildren(h("h2", {}, t(own ? "tab_myfindings" : "tab_findings")), reflectsLine(ans.reflects), form,
    h("p", {class: "help", "data-testid": "findings-count"}, tf(list.length === 1 && !partial ? "findings_count_1" : "findings_count", {n: list.length + (partial ? "+" : "")}) + (list.length > MAX_ROWS ? " · " + tf("shown_first", {n: MAX_ROWS}) : "")),
    table(headers, rows));
}
VIEWS.findings = (root) => findingsView(root, false);
VIEWS.findings.live = (root) => { if (!state.as_of) show("findings"); };
VIEWS.myfindings = (root) => findingsView(root, true);
VIEWS.myfindings.live = (root) => { if (!state.as_of) show("myfindings"); };

// the evidence of a finding, or one entry: facts, signature, inclusion, all checked here
async function openEvidence(finding, single) {
  const dlg = $("#evidence"), body = $("#evidence-body");
  const items = single ? [single] : finding.evidence.concat(finding.resolved ? finding.resolved.evidence : []);
  $("#evidence-h").textContent = single ? `${t("entry")} ${single.chain}:${single.seq}` : `${t("evidence_of")} ${finding.code} (${finding.index})`;
  const status = h("p", {class: "help", role: "status", "data-testid": "evidence-status"}, t("verifying"));
  const head = [];
  if (finding) {
    head.push(h("p", {}, finding.message));
    head.push(h("p", {}, h("strong", {}, t("cure") + ": "), cure(finding.code)));
    if (finding.resolved) head.push(h("p", {class: "good"}, `${t("resolved_by")} ${finding.resolved.index}: ${finding.resolved.message}`));
  }
  body.replaceChildren(...head, status);
  if (!dlg.open) dlg.showModal();
  let cp = null, allOk = true, partial = false;
  try {
    cp = await signedCheckpoint();
    body.append(h("p", {class: cp ? "good" : "bad", "data-testid": "checkpoint-check"},
      cp ? `✓ ${t("checkpoint_ok")}: ${cp.origin}, ${t("tree_size")} ${cp.size}, root ${hex(cp.root).slice(0, 16)}…` +
        (cp.consistentWith ? ` · ✓ ${tf("consistent_with", {n: cp.consistentWith})}` : "") : t("no_checkpoint")));
  } catch (e) { allOk = false; body.append(h("p", {class: "bad", "data-testid": "checkpoint-check"}, "✗ " + e.message)); }
  for (const ev of items) {
    const sec = h("section", {class: "entry-check"}, h("h3", {}, `${ev.chain}:${ev.seq}` + (ev.index !== undefined ? ` · ${t("index")} ${ev.index}` : "")));
    body.append(sec);
    try {
      const r = await checkEntry(ev.chain, ev.seq, ev.hash, cp);
      const ul = h("ul", {class: "checks"});
      for (const c of r.checks) {
        if (c.ok === false) allOk = false;
        if (c.ok === null) partial = true;
        const mark = c.ok === true ? "✓" : c.ok === false ? "✗" : "…";
        ul.append(h("li", {class: c.ok === true ? "good" : c.ok === false ? "bad" : "warn", "data-check": c.name, "data-ok": String(c.ok)},
          `${mark} ${t("check_" + c.name)}: ${c.ok === true ? t("ok") : c.ok === false ? t("fail") : t("pending")} — ${c.detail || ""}`));
      }
      sec.append(ul);
      if (r.content) sec.append(factsTable(r.content, r));
    } catch (e) {
      if (e.status === 403) { partial = true; sec.append(h("p", {class: "warn"}, t("not_yours") + " (" + e.message + ")")); }
      else { allOk = false; sec.append(h("p", {class: "bad"}, e.message)); }
    }
  }
  status.textContent = !allOk ? t("some_failed") : partial ? t("partly_verified") : t("all_verified");
  status.className = !allOk ? "bad" : partial ? "warn" : "good";
}
function show_(v) {
  if (v instanceof Uint8Array) return hex(v);
  if (Array.isArray(v) || (v && typeof v === "object")) return JSON.stringify(v, (k, x) => (x instanceof Uint8Array ? hex(x) : typeof x === "bigint" ? String(x) : x));
  return String(v);
}
function factsTable(c, r) {
  const rows = [[t("type"), c.type], [t("occurred"), c.occurred_at], [t("recorded"), r.recorded_at || ""],
    [t("index"), String(r.index)], ["key_id", c.key_id], ["command_id", c.command_id], ["prev", hex(c.prev).slice(0, 16) + "…"]];
  for (const [k, v] of Object.entries(c.body || {})) rows.push(["body." + k, show_(v)]);
  return table([t("facts"), ""], rows);
}

// --- timeline (a party's chain) ------------------------------------------------------------------
async function timelineView(root, own) {
  const party = own ? session.party : (state.tlParty || (state.parties[0] || {}).party || session.party);
  const partySel = select(state.parties.map((p) => [p.party, `${p.party} ${p.name || ""}`]), party); partySel.id = "tl-party";
  const form = own ? null : h("form", {class: "row", onsubmit: (ev) => { ev.preventDefault(); state.tlParty = partySel.value; show("timeline"); }},
    field(t("party"), partySel), h("button", {type: "submit"}, t("show")));
  const list = h("tbody", {});
  const more = h("button", {type: "button", hidden: true}, t("load_more"));
  const refl = h("div", {});
  root.replaceChildren(h("h2", {}, t(own ? "tab_chain" : "tab_timeline") + (own ? "" : ": " + party)), refl, form,
    h("div", {class: "table-wrap", tabindex: "0", role: "region", "aria-label": t("tab_timeline")}, h("table", {},
      h("thead", {}, h("tr", {}, [t("seq"), t("type"), t("occurred"), t("recorded"), t("index"), t("facts"), t("evidence")].map((x) => h("th", {scope: "col"}, x)))),
      list)), more);
  let after = 0;
  async function page() {
    const ans = await api("/v1/console/timeline" + q({party: own ? "" : party, after, limit: 100, ...point()}));
    refl.replaceChildren(reflectsLine(ans.reflects, `${t("as_of")} ${ans.as_of_size}`));
    if (!ans.entries.length && after === 0) list.append(h("tr", {}, h("td", {colspan: "7"}, t("no_entries"))));
    for (const e of ans.entries) {
      const facts = Object.entries(e.body).slice(0, 4).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join("; ");
      list.append(h("tr", {"data-seq": String(e.seq)}, h("td", {}, String(e.seq)), h("td", {}, e.type), h("td", {}, e.occurred_at), h("td", {}, e.recorded_at),
        h("td", {}, String(e.index)), h("td", {class: "facts"}, facts),
        h("td", {}, h("button", {type: "button", class: "small", onclick: () => openEvidence(null, {chain: ans.party, seq: e.seq, hash: e.entry_hash, index: e.index})}, t("open_evidence")))));
    }
    after = ans.next_after;
    more.hidden = !ans.more;
  }
  more.addEventListener("click", () => page().catch((e) => showError(refl, e)));
  await page();
}
VIEWS.timeline = (root) => timelineView(root, false);
VIEWS.timeline.live = () => { if (!state.as_of) show("timeline"); };
VIEWS.chain = (root) => timelineView(root, true);
VIEWS.chain.live = () => { if (!state.as_of) show("chain"); };

// --- a lot's trace -------------------------------------------------------------------------------
VIEWS.flow = async function (root) {
  const lot = h("input", {id: "flow-lot", value: state.lot || "", required: true, size: "28"});
  const dir = select([["up", t("up")], ["down", t("down")]], state.dir || "up"); dir.id = "flow-dir";
  const out = h("div", {class: "flow-out"});
  const form = h("form", {class: "row", onsubmit: async (ev) => {
    ev.preventDefault(); state.lot = lot.value.trim(); state.dir = dir.value;
    await traceLot(out).catch((e) => showError(out, e));
  }}, field(t("lot"), lot), field(t("direction"), dir), h("button", {type: "submit"}, t("trace")));
  root.replaceChildren(h("h2", {}, t("tab_flow")), form, out);
  if (state.lot) await traceLot(out);
};
async function traceLot(out) {
  const base = {lot: state.lot, direction: state.dir || "up", ...point()};
  const graph = await api("/v1/flow" + q({...base, format: "json"}));
  const parts = [];
  try {
    const resp = await api("/v1/flow" + q({...base, format: "svg"}), {raw: true});
    const url = URL.createObjectURL(new Blob([await resp.blob()], {type: "image/svg+xml"}));
    // an image: nothing in the server's SVG can run here
    parts.push(h("img", {src: url, class: "graph", alt: tf("graph_alt", {lot: state.lot})}));
  } catch (e) { parts.push(h("p", {class: "help"}, e.message)); }
  parts.push(h("h3", {}, t("edges")), table([t("src"), t("dst"), t("kind"), t("kg"), "REO kg", t("occurred"), t("index")],
    (graph.edges || []).map((e) => [e.src.replace(/^lot:/, ""), e.dst.replace(/^lot:/, ""), e.kind, e.kg || "", e.reo_kg || "", e.date || "", String(e.index ?? "")])));
  out.replaceChildren(...parts);
}

// --- the monthly report ---------------------------------------------------------------------------
VIEWS.report = async function (root) {
  const last = new Date(); last.setUTCMonth(last.getUTCMonth() - 1);
  const month = h("input", {type: "month", id: "r-month", value: state.month || last.toISOString().slice(0, 7), required: true});
  const partySel = select(state.parties.map((p) => [p.party, `${p.party} ${p.name || ""}`]), state.rParty || session.party); partySel.id = "r-party";
  const out = h("div", {});
  const form = h("form", {class: "row", onsubmit: async (ev) => {
    ev.preventDefault(); state.month = month.value; state.rParty = partySel.value;
    await buildReport(out).catch((e) => showError(out, e));
  }}, session.me.reads_all ? field(t("party"), partySel) : null, field(t("month"), month), h("button", {type: "submit"}, t("report_build")));
  root.replaceChildren(h("h2", {}, t("tab_report")), form, out);
  if (state.month) await buildReport(out);
};
function fromJsonBody(v) {
  if (Array.isArray(v)) return v.map(fromJsonBody);
  if (v && typeof v === "object") {
    if (Object.keys(v).length === 1 && typeof v.$bin === "string") return unhex(v.$bin);
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fromJsonBody(x)]));
  }
  return v;
}
async function buildReport(out) {
  const party = session.me.reads_all ? (state.rParty || session.party) : session.party;
  const rep = await api("/v1/console/report" + q({party, month: state.month}));
  const flow = rep.to_sign[0].body;
  const rows = Object.entries(flow.totals).map(([k, v]) => [k, fmtT(v)]);
  const blob = new Blob([JSON.stringify(rep, null, 2)], {type: "application/json"});
  const parts = [h("p", {}, `${rep.party} · ${rep.month} · ${t("report_due")} ${rep.due} · ${t("covered")} ${rep.covered_entries} (seq ${flow.first_seq}..${flow.last_seq})`),
    table([t("facts"), "kg REO"], rows),
    h("h3", {}, t("to_sign")), h("pre", {class: "json", tabindex: "0", "data-testid": "to-sign"}, JSON.stringify(rep.to_sign, null, 2)),
    h("p", {class: "row"}, h("a", {href: URL.createObjectURL(blob), download: `report-${rep.party}-${rep.month}.json`, class: "button"}, t("download")))];
  const result = h("div", {role: "status"});
  if (party === session.party) {
    parts[parts.length - 1].append(h("button", {type: "button", id: "sign-report", onclick: () => signAndSubmit(rep, result).catch((e) => showError(result, e))}, t("sign_submit")));
  } else parts.push(h("p", {class: "help"}, t("only_own")));
  parts.push(result);
  out.replaceChildren(...parts);
}
// sign the report's entries here, on top of the chain's head, and append them (docs/FORMAT.md 2)
async function signAndSubmit(rep, result) {
  const head = await api(`/v1/chains/${encodeURIComponent(session.party)}/head`);
  let seq = head.seq, prev = unhex(head.entry_hash);
  const occurred = new Date(Date.now() + session.skew).toISOString().replace(/\.\d{3}Z$/, "Z");
  const envelopes = [];
  for (const item of rep.to_sign) {
    seq += 1;
    const content = pack({body: fromJsonBody(item.body), chain: session.party, command_id: crypto.randomUUID(),
      key_id: session.keyId, occurred_at: occurred, prev, seq, type: item.type, v: 1});
    const sig = new Uint8Array(await crypto.subtle.sign(ED, session.key, concat(ENTRY_TAG, content)));
    const envelope = pack({entry: content, sig});
    envelopes.push(b64(envelope));
    prev = await sha256(envelope);
  }
  const resp = await fetch("/v1/entries", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({entries: envelopes})});
  const ans = await resp.json();
  if (!resp.ok) throw new Problem(resp.status, ans);
  result.replaceChildren(h("p", {class: "good", "data-testid": "submitted"}, `✓ ${t("signed_ok")}: ` +
    ans.receipts.map((r) => `${r.chain}:${r.seq} (${t("index")} ${r.index})`).join(", ")),
    ...(ans.findings || []).map((f) => h("p", {class: "bad"}, `${f.code}: ${f.message}`)));
}

// --- settings: the log's key ----------------------------------------------------------------------
VIEWS.settings = async function (root) {
  const input = h("textarea", {id: "vkey", rows: "2", cols: "80", spellcheck: "false"}, logKey());
  const note = h("p", {role: "status"});
  const offered = (session.me.checkpoint_keys || []).map((k) => h("li", {}, h("code", {}, k), " ",
    h("button", {type: "button", class: "small", onclick: () => { input.value = k; }}, t("use"))));
  root.replaceChildren(h("h2", {}, t("tab_settings")), h("p", {class: "help"}, t("vkey_help")),
    h("form", {onsubmit: (ev) => {
      ev.preventDefault();
      try { parseVkey(input.value); localStorage.setItem("reledger-console-vkey:" + location.host, input.value.trim()); note.textContent = t("saved"); }
      catch (e) { note.textContent = e.message; }
    }}, field(t("vkey_label"), input), h("button", {type: "submit"}, t("save"))), note, h("ul", {class: "offered"}, offered));
};

// ---------------------------------------------------------------------------------------------
// live: one stream per console, over fetch() with signed headers (EventSource cannot sign)
async function liveLoop() {
  let backoff = 1000;
  while (session.key) {
    const ctl = new AbortController();
    state.live = ctl;
    try {
      const headers = await signedHeaders("GET", "/v1/console/events");
      const resp = await fetch("/v1/console/events", {headers, signal: ctl.signal, cache: "no-store"});
      if (resp.status === 429) { setLive(t("live_busy")); await sleep(30000); continue; }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      backoff = 1000;
      const reader = resp.body.getReader();
      let buf = "";
      const td = new TextDecoder();
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += td.decode(value, {stream: true});
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
          const ev = {event: "message", data: ""};
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) ev.event = line.slice(7);
            else if (line.startsWith("data: ")) ev.data += line.slice(6);
          }
          if (ev.data) onLive(ev.event, JSON.parse(ev.data));
        }
      }
    } catch (e) {
      if (!session.key) return;
    }
    setLive(t("live_off"));
    await sleep(backoff);
    backoff = Math.min(backoff * 2, 30000);
  }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function setLive(text) { $("#live").textContent = text; $("#feed-state").textContent = text; }
function onLive(event, data) {
  if (event === "hello") { setLive(tf("live_on", {n: data.size})); return; }
  if (event !== "log") return;
  setLive(tf("live_on", {n: data.size}));
  const feed = $("#feed");
  for (const e of data.entries) {
    feed.prepend(h("li", {"data-index": String(e.index)}, h("strong", {}, e.type), " ",
      h("span", {}, `${e.chain}:${e.seq}`), h("br"), h("small", {}, `${t("index")} ${e.index} · ${e.recorded_at}`)));
  }
  while (feed.children.length > 50) feed.lastChild.remove();
  if (state.as_of) {
    state.pinnedSince += data.entries.length;
    $("#feed-state").textContent = tf("new_entries", {n: state.pinnedSince});
  } else refreshSoon();
}

// ---------------------------------------------------------------------------------------------
// start
async function signIn(file) {
  const text = await file.text();
  const k = await importKeyFile(text);
  Object.assign(session, k);
  // the server's clock, for the signing time (a request is refused outside 300 s of it)
  const health = await fetch("/v1/health", {cache: "no-store"});
  const date = Date.parse(health.headers.get("date") || "");
  if (Number.isFinite(date)) session.skew = date - Date.now();
  session.me = await api("/v1/console/me");
  state.parties = (await api("/v1/console/parties")).parties;
  if (!logKey() && session.me.checkpoint_keys.length) {
    localStorage.setItem("reledger-console-vkey:" + location.host, session.me.checkpoint_keys[0]);
  }
  $("#who").replaceChildren(h("span", {}, `${t("signed_in_as")} `), h("strong", {"data-testid": "party"}, session.party),
    ` · ${session.me.name || ""} · ${t("roles")}: ${session.me.roles.join(", ")}`);
  $("#signin").hidden = true; $("#app").hidden = false; $("#signout").hidden = false;
  liveLoop();
  await show(tabsFor()[0]);
}
function signOut() {
  session.key = null; session.party = null;
  if (state.live) state.live.abort();
  location.reload();
}
document.addEventListener("DOMContentLoaded", () => {
  applyWords();
  $("#lang").addEventListener("click", () => {
    lang = lang === "zh" ? "en" : "zh";
    localStorage.setItem("reledger-console-lang", lang);
    applyWords();
    if (session.key) { renderTabs(); show(state.view); }
  });
  $("#signout").addEventListener("click", signOut);
  $("#signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = $("#keyfile").files[0];
    $("#signin-error").textContent = "";
    if (!file) return;
    try { await signIn(file); } catch (e) { session.key = null; $("#signin-error").textContent = e.message; }
  });
  $("#time-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.as_of = $("#as-of").value.trim(); state.valid_at = $("#valid-at").value.trim(); state.pinnedSince = 0;
    $("#time-error").textContent = "";
    show(state.view);
  });
  $("#time-now").addEventListener("click", () => { $("#as-of").value = ""; $("#valid-at").value = ""; state.as_of = ""; state.valid_at = ""; show(state.view); });
  $("#evidence-close").addEventListener("click", () => $("#evidence").close());
});
// for the end-to-end tests: the request signing, checked byte for byte against commands/auth.py
window.reledgerConsole = {pack, unpack, requestMessage, verifyInclusion, verifyConsistency, verifyNote};
