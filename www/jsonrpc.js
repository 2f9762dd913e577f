// A JSON-RPC 2.0 client over one WebSocket to ws(s)://<this host>/<name>,
// shared by webauth.html and websql.html. Plain script, no build step.
//
// Like webchat.html, it reconnects by itself when the connection closes: after
// 0.5 s, then twice as long each time up to 10 s, and back to 0.5 s once a
// connection opens. A new connection is a new server session (logged out).
"use strict";

const FIRST_RETRY_DELAY_MS = 500;
const MAX_RETRY_DELAY_MS = 10000;

class JsonRpcClient {
  // events: { open(), close(event, retryDelayMs), error(), unexpected(text) }, all optional.
  constructor(name, events) {
    this.url = (location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host + "/" + name;
    this.events = events || {};
    this.socket = null;
    this.nextId = 1;
    this.pending = new Map();
    this.retryDelay = FIRST_RETRY_DELAY_MS;
  }

  connect() {
    const events = this.events;
    this.socket = new WebSocket(this.url);
    this.socket.onopen = () => {
      this.retryDelay = FIRST_RETRY_DELAY_MS;
      if (events.open) events.open();
    };
    this.socket.onclose = (event) => {
      for (const { reject } of this.pending.values()) reject(new Error("connection closed"));
      this.pending.clear();
      const delay = this.retryDelay;
      if (events.close) events.close(event, delay);
      setTimeout(() => this.connect(), delay);
      this.retryDelay = Math.min(delay * 2, MAX_RETRY_DELAY_MS);
    };
    this.socket.onerror = () => events.error && events.error();
    this.socket.onmessage = (event) => {
      let reply;
      try {
        reply = JSON.parse(event.data);
      } catch (e) {
        if (events.unexpected) events.unexpected("unreadable reply: " + event.data);
        return;
      }
      for (const response of Array.isArray(reply) ? reply : [reply]) {
        const waiter = this.pending.get(response.id);
        if (!waiter) {
          if (events.unexpected) events.unexpected("unexpected reply: " + JSON.stringify(response));
          continue;
        }
        this.pending.delete(response.id);
        if ("error" in response) waiter.reject(response.error); else waiter.resolve(response.result);
      }
    };
  }

  // Resolves with the result, rejects with the JSON-RPC error object (or an Error).
  call(method, params) {
    return new Promise((resolve, reject) => {
      if (!this.socket || this.socket.readyState !== WebSocket.OPEN) { reject(new Error("not connected")); return; }
      const id = this.nextId++;
      this.pending.set(id, { resolve, reject });
      this.socket.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
    });
  }

  static describeError(error) {
    if (error instanceof Error) return error.message;
    let text = error.message + " (code " + error.code + ")";
    const data = error.data;
    if (data && typeof data.retry_after_ms === "number") {
      text += "; try again in " + Math.ceil(data.retry_after_ms / 1000) + " s";
    }
    return text;
  }
}
