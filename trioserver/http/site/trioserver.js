// trioserver.js: the binary protocol over WebSocket, for browsers. No build step, no framework.
//
//   import { TrioClient } from "/trioserver.js";
//   const client = new TrioClient();            // ws(s)://<this host>/ws, subprotocol trioserver.v1
//   client.on("open", async () => {             // after every (re)connect
//     await client.register("alice", "secret"); // 0 ok, 1 name taken, ...
//     const { result } = await client.login("alice", "secret");
//   });
//   client.on(103, (body) => ...);              // pushes: packets no request waits for
//   const reply = await client.request(100, "lobby");   // { code, body } (body: Uint8Array)
//   await client.ping();                        // round trip in ms
//   client.connect();
//
// Packets are the TCP port's, byte for byte (docs/protocol.md): an 8-byte header, u16
// pkgLen (header included), u16 msgCode, u32 CRC-32 of the body, all big-endian, then the
// body. Each send is one binary message; replies may arrive several to a message or one
// across several, so incoming bytes are framed here. A reply is matched to the oldest
// request waiting for its code (the server answers in order); anything else is a push.
//
// The connection pings every `heartbeat` seconds (the server closes connections silent
// for 3 x 20 s + 10 s by default) and reconnects after a close with a growing back-off
// (0.5 s doubling up to 30 s, with jitter); "open" fires again after each reconnect, so
// log in from there.

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (ISO-HDLC, zlib's crc32) of a Uint8Array. */
export function crc32(bytes) {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function asBytes(body) {
  if (body === undefined || body === null) return new Uint8Array(0);
  if (typeof body === "string") return encoder.encode(body);
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  throw new TypeError(`a body is a string, a Uint8Array or an ArrayBuffer, not ${body}`);
}

/** One packet's bytes: header (pkgLen, msgCode, CRC-32) and body. */
export function encodePacket(code, body) {
  const payload = asBytes(body);
  const length = 8 + payload.length;
  if (code < 0 || code > 0xffff || length > 0xffff) {
    throw new RangeError(`code ${code} or body of ${payload.length} bytes does not fit a packet`);
  }
  const packet = new Uint8Array(length);
  const view = new DataView(packet.buffer);
  view.setUint16(0, length);
  view.setUint16(2, code);
  view.setUint32(4, payload.length ? crc32(payload) : 0);
  packet.set(payload, 8);
  return packet;
}

/** Splits a byte stream into packets: feed it chunks, take whole packets. */
export class PacketDecoder {
  constructor() {
    this.buffer = new Uint8Array(0);
  }
  /** The packets the bytes so far complete, as [{ code, body }]. */
  feed(chunk) {
    const data = new Uint8Array(this.buffer.length + chunk.length);
    data.set(this.buffer);
    data.set(chunk, this.buffer.length);
    const packets = [];
    let at = 0;
    while (data.length - at >= 8) {
      const view = new DataView(data.buffer, at, 8);
      const length = view.getUint16(0);
      if (length < 8) throw new Error(`bad packet length ${length}`);
      if (data.length - at < length) break;
      const code = view.getUint16(2);
      const body = data.slice(at + 8, at + length);
      if (crc32(body) !== (body.length ? view.getUint32(4) : 0)) {
        throw new Error(`bad CRC on a packet with code ${code}`);
      }
      packets.push({ code, body });
      at += length;
    }
    this.buffer = data.slice(at);
    return packets;
  }
}

/** A NUL-padded fixed-size field (char[size]), as register and login carry names. */
export function field(text, size) {
  const bytes = encoder.encode(text);
  if (bytes.length >= size) throw new RangeError(`"${text}" is longer than ${size - 1} bytes`);
  const out = new Uint8Array(size);
  out.set(bytes);
  return out;
}

function joinBytes(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Text of a body (UTF-8). */
export function text(body) {
  return decoder.decode(body);
}

export const PING = 0;
export const REGISTER = 5;
export const LOGIN = 6;

export class TrioClient {
  /**
   * @param {object} options
   *   url: the WebSocket address (default: /ws on this page's host, wss: under https)
   *   timeout: seconds a request waits for its reply (default 5)
   *   heartbeat: seconds between keep-alive pings (default 20; 0: none)
   *   reconnect: reconnect after a close (default true)
   */
  constructor(options = {}) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.url = options.url || `${scheme}//${location.host}/ws`;
    this.timeout = (options.timeout ?? 5) * 1000;
    this.heartbeat = (options.heartbeat ?? 20) * 1000;
    this.reconnect = options.reconnect ?? true;
    this.socket = null;
    this.state = "closed"; // closed, connecting, open
    this.backoff = 500;
    this.handlers = new Map(); // code or event name -> [fn]
    this.waiting = new Map(); // code -> [{ resolve, reject, timer }]
    this.stopped = false;
    this.lastClose = null;
  }

  /** Call fn(body, code) for pushes with `code`, or fn(...) on "open", "close", "state". */
  on(what, fn) {
    if (!this.handlers.has(what)) this.handlers.set(what, []);
    this.handlers.get(what).push(fn);
    return this;
  }

  emit(what, ...args) {
    for (const fn of this.handlers.get(what) || []) {
      try {
        fn(...args);
      } catch (error) {
        console.error(error);
      }
    }
  }

  setState(state) {
    this.state = state;
    this.emit("state", state);
  }

  connect() {
    this.stopped = false;
    if (this.socket) return;
    const socket = new WebSocket(this.url, ["trioserver.v1"]);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    this.decoder = new PacketDecoder();
    this.setState("connecting");
    socket.onopen = () => {
      this.backoff = 500;
      this.setState("open");
      if (this.heartbeat) {
        this.pinger = setInterval(() => this.send(PING), this.heartbeat);
      }
      this.emit("open");
    };
    socket.onmessage = (message) => {
      let packets;
      try {
        packets = this.decoder.feed(new Uint8Array(message.data));
      } catch (error) {
        console.error(error);
        socket.close(1002, "bad packet");
        return;
      }
      for (const packet of packets) this.dispatch(packet);
    };
    socket.onclose = (event) => {
      clearInterval(this.pinger);
      this.socket = null;
      this.lastClose = { code: event.code, reason: event.reason };
      for (const queue of this.waiting.values()) {
        for (const entry of queue) {
          clearTimeout(entry.timer);
          entry.reject(new Error(`connection closed (${event.code})`));
        }
      }
      this.waiting.clear();
      this.setState("closed");
      this.emit("close", event.code, event.reason);
      if (this.reconnect && !this.stopped) {
        const delay = this.backoff * (0.5 + Math.random() / 2);
        this.backoff = Math.min(this.backoff * 2, 30000);
        setTimeout(() => this.connect(), delay);
      }
    };
  }

  /** Close for good (no reconnect). */
  close() {
    this.stopped = true;
    if (this.socket) this.socket.close(1000);
  }

  dispatch(packet) {
    const queue = this.waiting.get(packet.code);
    if (queue && queue.length) {
      const entry = queue.shift();
      clearTimeout(entry.timer);
      entry.resolve(packet);
      return;
    }
    if (packet.code === PING) return; // a keep-alive's answer
    this.emit(packet.code, packet.body, packet.code);
  }

  /** Send a packet, expecting no reply. */
  send(code, body) {
    if (!this.socket || this.state !== "open") throw new Error("not connected");
    this.socket.send(encodePacket(code, body));
  }

  /** Send a packet; resolves with the next packet of `replyCode` (default: `code`). */
  request(code, body, replyCode = code) {
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject, timer: null };
      entry.timer = setTimeout(() => {
        const queue = this.waiting.get(replyCode) || [];
        const at = queue.indexOf(entry);
        if (at >= 0) queue.splice(at, 1);
        reject(new Error(`no reply to code ${code} within ${this.timeout / 1000} s`));
      }, this.timeout);
      if (!this.waiting.has(replyCode)) this.waiting.set(replyCode, []);
      this.waiting.get(replyCode).push(entry);
      try {
        this.send(code, body);
      } catch (error) {
        clearTimeout(entry.timer);
        this.waiting.get(replyCode).pop();
        reject(error);
      }
    });
  }

  /** Round trip of a ping, in milliseconds. */
  async ping() {
    const started = performance.now();
    await this.request(PING);
    return performance.now() - started;
  }

  /** Create an account: resolves with the result code (0 ok, 1 taken, ...). */
  async register(username, password, type = 1) {
    const kind = new Uint8Array(4);
    new DataView(kind.buffer).setInt32(0, type);
    const reply = await this.request(
      REGISTER,
      joinBytes(kind, field(username, 56), field(password, 40)),
    );
    return new DataView(reply.body.buffer, reply.body.byteOffset).getInt32(0);
  }

  /** Log in: resolves with { result, token } (0 ok; the token resumes a session). */
  async login(username, password) {
    const reply = await this.request(LOGIN, joinBytes(field(username, 56), field(password, 40)));
    const view = new DataView(reply.body.buffer, reply.body.byteOffset);
    return { result: view.getInt32(56), token: reply.body.slice(60, 92) };
  }
}
