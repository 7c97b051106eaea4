// The REST protocol of a fedcore client (transports/rest/client.py), from a web page:
// register -> fetch the global -> long-poll /client/signal -> train -> push the update.

export class HttpError extends Error {
  constructor(status, detail) {
    super(`HTTP ${status}: ${detail}`);
    this.name = 'HttpError';
    this.status = status;
  }
}

/** Network failure or a 5xx: worth retrying with back-off. */
export const retriable = (e) => !(e instanceof HttpError) || e.status >= 500;
/** The server does not know this id/token (it restarted): register anew. */
export const forgotten = (e) => e instanceof HttpError && (e.status === 401 || e.status === 403 || e.status === 404);

export class RestClient {
  constructor(base = '') {
    this.base = base;
    this.clientId = null;
    this.token = null;
    this.name = null;
  }

  headers(extra = {}) {
    const h = { ...extra };
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    if (this.clientId) h['X-Fedcore-Client'] = this.clientId;
    return h;
  }

  async call(method, path, { body, headers = {}, timeoutMs = 60000 } = {}) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), timeoutMs);
    let resp;
    try {
      resp = await fetch(this.base + path, { method, body, headers: this.headers(headers), signal: ctl.signal, cache: 'no-store' });
    } finally {
      clearTimeout(timer);
    }
    if (resp.status >= 400) {
      let detail = await resp.text();
      try {
        detail = JSON.parse(detail).detail ?? detail;
      } catch { /* not JSON: keep the text */ }
      throw new HttpError(resp.status, typeof detail === 'string' ? detail : JSON.stringify(detail));
    }
    return resp;
  }

  async register(name, numSamples) {
    const body = JSON.stringify({ name, num_samples: numSamples, transport: 'rest', tags: ['browser'] });
    const data = await (await this.call('POST', '/client', { body, headers: { 'Content-Type': 'application/json' } })).json();
    this.clientId = data.client_id;
    this.token = data.token;
    this.name = name;
    return data;
  }

  /** [round version, payload bytes] of the current global model. */
  async fetchGlobal() {
    const resp = await this.call('GET', '/transmitter');
    return [Number(resp.headers.get('X-Fedcore-Round')), new Uint8Array(await resp.arrayBuffer())];
  }

  /** Report `state`; the answer {action, round, config} may be long-polled up to waitS seconds. */
  async signal(state, waitS = 0) {
    const body = JSON.stringify({ state, wait_s: waitS });
    const resp = await this.call('POST', '/client/signal', { body, headers: { 'Content-Type': 'application/json' }, timeoutMs: (waitS + 10) * 1000 });
    return resp.json();
  }

  async pushUpdate(round, payload, numSamples, metrics) {
    await this.call('POST', `/transmitter/${encodeURIComponent(this.name)}`, {
      body: payload,
      headers: {
        'Content-Type': 'application/octet-stream',
        'X-Fedcore-Round': String(round),
        'X-Fedcore-Samples': String(numSamples),
        'X-Fedcore-Metrics': JSON.stringify(metrics),
      },
    });
  }

  /** Split mode: one micro-batch message to the edge; resolves to the edge's reply bytes. */
  async splitPost(round, bytes) {
    const resp = await this.call('POST', `/split/${round}`, { body: bytes, headers: { 'Content-Type': 'application/octet-stream' } });
    return new Uint8Array(await resp.arrayBuffer());
  }

  async disconnect() {
    if (this.clientId) await this.call('DELETE', `/client/${this.clientId}`);
  }
}
