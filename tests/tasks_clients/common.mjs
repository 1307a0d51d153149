// Shared by v1_client.mjs and ext_client.mjs: the plan, the output lines, the wire tap, small async helpers.
// Nothing here speaks MCP; each client script drives its own official SDK.

import { existsSync, readFileSync } from "node:fs";

/** The plan: argv[2] is the JSON text itself or the path of a file holding it. */
export function readPlan(argv = process.argv) {
  const arg = argv[2];
  if (arg === undefined) throw new Error("usage: node <client>.mjs '<plan JSON>' | <plan file>");
  const text = arg.trimStart().startsWith("{") || !existsSync(arg) ? arg : readFileSync(arg, "utf8");
  const plan = JSON.parse(text);
  if (!Array.isArray(plan.steps)) throw new Error("plan.steps must be an array");
  if (!Array.isArray(plan.command) && typeof plan.url !== "string") throw new Error("plan needs command (argv) or url");
  return plan;
}

export function emit(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

/** A JSON-RPC error (SDK errors carry code/message/data) or any other failure, as {code, message, data?}. */
export function describeError(err) {
  if (err?.rpcError !== undefined) return err.rpcError;
  const out = { code: err?.code ?? null, message: String(err?.message ?? err) };
  if (err?.data !== undefined) out.data = err.data;
  if (err?.name && err.name !== "Error") out.name = err.name;
  if (err?.cause !== undefined && err.cause !== null) out.cause = describeError(err.cause);
  return out;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class TimeoutError extends Error {
  constructor(message) {
    super(message);
    this.name = "TimeoutError";
    this.code = "timeout";
  }
}

export async function withTimeout(promise, ms, what) {
  let timer;
  try {
    return await Promise.race([
      promise,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new TimeoutError(`${what} did not finish within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

export function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

export const TERMINAL = ["completed", "failed", "cancelled"];

/**
 * Records every JSON-RPC message on a connected SDK transport: what the client sent and what the server answered,
 * so a step can print the exact wire result next to what the SDK made of it. `intercept(message)` may claim an
 * incoming message (return true) before the SDK sees it.
 */
export class WireTap {
  constructor(transport, intercept = () => false) {
    this.exchanges = []; // {id, method, params, result?, error?, answered}
    this.byId = new Map();
    this.incomingRequests = []; // server -> client requests (v1 side channel)
    this.notifications = [];
    this.listeners = new Set();
    const send = transport.send.bind(transport);
    transport.send = (message, options) => {
      if (message && typeof message === "object" && !Array.isArray(message) && message.method && message.id !== undefined) {
        const entry = { id: message.id, method: message.method, params: message.params, answered: false };
        this.exchanges.push(entry);
        this.byId.set(String(message.id), entry);
        this.notify({ type: "sent", entry });
      }
      return send(message, options);
    };
    const onmessage = transport.onmessage;
    transport.onmessage = (message, extra) => {
      this.observe(message);
      if (intercept(message)) return;
      onmessage?.call(transport, message, extra);
    };
  }

  observe(message, httpStatus) {
    if (!message || typeof message !== "object" || Array.isArray(message)) return;
    if (message.method === undefined && message.id !== undefined) {
      const entry = this.byId.get(String(message.id));
      if (entry !== undefined) {
        entry.answered = true;
        if (httpStatus !== undefined) entry.http_status = httpStatus;
        if ("error" in message) entry.error = message.error;
        else entry.result = message.result;
        this.notify({ type: "answered", entry });
      }
    } else if (message.method !== undefined && message.id !== undefined) {
      this.incomingRequests.push(message);
    } else if (message.method !== undefined) {
      this.notifications.push(message);
    }
  }

  notify(event) {
    for (const listener of [...this.listeners]) listener(event);
  }

  mark() {
    return this.exchanges.length;
  }

  /** Exchanges sent since `mark`, optionally only those of `method`. */
  since(mark, method) {
    return this.exchanges.slice(mark).filter((entry) => method === undefined || entry.method === method);
  }

  /** The wire answer of the last `method` request sent since `mark`: the result, or {error}. */
  lastAnswer(mark, method) {
    const entries = this.since(mark, method).filter((entry) => entry.answered);
    const entry = entries[entries.length - 1];
    if (entry === undefined) return undefined;
    if (!("error" in entry)) return entry.result;
    return entry.http_status === undefined ? { error: entry.error } : { error: entry.error, http_status: entry.http_status };
  }

  /** Resolves with the first exchange (sent or answered, per `event`) that `predicate` accepts. */
  waitFor(predicate, event = "answered") {
    const found = this.exchanges.find((entry) => (event === "sent" || entry.answered) && predicate(entry));
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve) => {
      const listener = (ev) => {
        if (ev.type === event && predicate(ev.entry)) {
          this.listeners.delete(listener);
          resolve(ev.entry);
        }
      };
      this.listeners.add(listener);
    });
  }
}

export function serverEnv(plan) {
  const env = {};
  for (const [key, value] of Object.entries(process.env)) if (value !== undefined) env[key] = value;
  return { ...env, ...(plan.env ?? {}) };
}

/** Runs the plan's steps with `handlers[kind]`; an error in a step is printed and the next step still runs. */
export async function runSteps(plan, handlers) {
  for (const [index, step] of plan.steps.entries()) {
    const handler = handlers[step.kind];
    const head = { step: index, kind: step.kind };
    if (handler === undefined) {
      emit({ ...head, error: { code: "unknown_step", message: `unknown step kind ${JSON.stringify(step.kind)}` } });
      continue;
    }
    const started = Date.now();
    try {
      const observed = await handler(step, index);
      emit({ ...head, ...observed, elapsed_ms: Date.now() - started });
    } catch (err) {
      const extra = err?.observed ?? {};
      emit({ ...head, ...extra, error: describeError(err), elapsed_ms: Date.now() - started });
    }
  }
}

/** Wraps a JSON-RPC error object from the wire so describeError prints it verbatim. */
export function rpcFailure(error, observed) {
  const err = new Error(error?.message ?? "JSON-RPC error");
  err.rpcError = error;
  if (observed !== undefined) err.observed = observed;
  return err;
}

/** `err` with what the step saw so far attached; a fresh error, since SDKs rethrow one error object for many calls. */
export function failWith(err, observed) {
  const out = new Error(String(err?.message ?? err));
  for (const key of ["code", "data", "name", "cause", "rpcError"]) if (err?.[key] !== undefined) out[key] = err[key];
  out.observed = { ...(err?.observed ?? {}), ...observed };
  return out;
}

export async function main(run) {
  try {
    await run();
    process.exit(0);
  } catch (err) {
    emit({ error: String(err?.stack ?? err?.message ?? err) });
    process.exit(1);
  }
}

// Requests through a WireTap: `request(method, run, observed)` runs `run` and returns its value with the raw answer;
// a failure becomes `wireFailure`: the server's JSON-RPC error as it came over the wire, when there was one.
export function wireRequests(tap) {
  const wireFailure = (mark, method, err, observed = {}) => {
    const raw = tap.lastAnswer(mark, method);
    if (raw?.error !== undefined) {
      return rpcFailure(raw.error, raw.http_status === undefined ? observed : { ...observed, http_status: raw.http_status });
    }
    return failWith(err, { ...observed, ...(raw === undefined ? {} : { raw }) });
  };
  const request = async (method, run, observed) => {
    const mark = tap.mark();
    try {
      return { value: await run(), raw: tap.lastAnswer(mark, method), mark };
    } catch (err) {
      throw wireFailure(mark, method, err, observed?.());
    }
  };
  return { wireFailure, request };
}
