// MCP tasks as of protocol revision 2026-07-28: the extension io.modelcontextprotocol/tasks (SEP-2663), driven by
// its official client, @modelcontextprotocol/ext-tasks (`createTaskSessionFromClient`, i.e. `withTasks` over the
// package's adapter for the TypeScript SDK v2 Client, @modelcontextprotocol/client, pinned to 2026-07-28). The
// server decides per call whether to answer with a task; the package polls tasks/get (honouring pollIntervalMs),
// answers the task's inputRequests with tasks/update through its onInputRequest callback, and cancels with
// tasks/cancel. The SDK's own codec rejects resultType "task", so the package needs a host "rawDispatch": here it
// writes the package's framed request on the SDK's own transport and claims the answer before the SDK sees it.
//
//   node ext_client.mjs '<plan JSON>' | plan.json
//
// Plan: {"command": [argv...] (stdio; the server inherits this process's environment plus "env", in "cwd")
//        | "url": "http://127.0.0.1:PORT/mcp" (Streamable HTTP) with optional "headers": {...},
//        "client_capabilities": {...} (default {"elicitation": {"form": {}}}),
//        "protocol_version": "2026-07-28" (the pinned revision),
//        "stdio_probe": "sibling" (default: the SDK probes server/discover on a short-lived second server process
//                       spawned from the same command) | "in_place" (probe on the session's own process),
//        "drive": true (default: each task is driven by the package's execution, which polls and answers input in
//                the background) | false (the execution is detached at once; "answer" sends tasks/update itself),
//        "request_timeout_ms": ms (default 60000), "steps": [...]}
// Steps, each printing one line {"step": i, "kind": ..., ...observed, "elapsed_ms"} or
// {"step": i, "kind": ..., "error": {code, message, data?}} (the server's JSON-RPC error verbatim where there was one)
// and the next step still runs; "client_errors" lists errors the package reported in the background meanwhile:
//   {"kind":"info"}         -> negotiated version and era, server capabilities, the package's task capabilities
//   {"kind":"list_tools"}   -> {"tools": [{name, execution}]}
//   {"kind":"call","tool":..,"arguments":{..},"as":"t1","preference":"allow|prefer|require|forbid",
//    "answer": {"action":..,"content":{..}} (for input_required on the call itself)}
//                           -> {"mode":"task","taskId","created":{wire CreateTaskResult}} or
//                              {"mode":"immediate","result":{wire result},"outcome":{...}}
//   {"kind":"get","task":"t1"} -> {"task": {wire DetailedTask}, "view": {the package's projection}}
//   {"kind":"wait","task":"t1","until":[...],"timeout_ms":20000,"poll_ms":N} -> {"task","polls"}; a terminal
//                              status outside "until" or the timeout is an error that still carries "task", "polls"
//   {"kind":"answer","task":"t1","action":"accept","content":{..},"contents":[..],"response":{..}}
//                           -> reads the task's inputRequests (tasks/get), answers every key ({action, content}; the
//                              i-th key gets contents[i], else content; "response" replaces the whole answer) and
//                              returns once the tasks/update carrying them was acknowledged:
//                              {"input_requests", "input_responses", "ack", "via": "driver"|"controller",
//                               "handler_calls": [what the package asked onInputRequest]}
//   {"kind":"outcome","task":"t1","timeout_ms":30000} -> the package's settled outcome {status, result|error}
//   {"kind":"cancel","task":"t1"} -> tasks/cancel: {"ack": {wire result}}
//   {"kind":"result"|"list","task":..} -> tasks/result / tasks/list sent as framed requests (removed in the
//                              extension: expect -32601): {"result"} or the error
//   {"kind":"raw","method":..,"params":{..},"extension":true,"envelope":true} -> any request; with the 2026 _meta
//                              envelope (unless envelope:false), declaring the tasks extension (unless extension:false)
//   {"kind":"sleep","ms":N}
// A "task" field names a task remembered by "as", or is taken as a literal task id.
// Any other failure prints {"error": "..."} and exits 1. The server's stderr passes through to this stderr.

import { readFileSync } from "node:fs";
import {
  CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, Client, PROTOCOL_VERSION_META_KEY, StreamableHTTPClientTransport,
} from "@modelcontextprotocol/client";
import { StdioClientTransport } from "@modelcontextprotocol/client/stdio";
import { DispatchError, createTaskSessionFromClient } from "@modelcontextprotocol/ext-tasks/client";
import {
  TERMINAL, WireTap, wireRequests, deferred, describeError, failWith, main, readPlan, rpcFailure, runSteps, serverEnv, sleep,
  withTimeout,
} from "./common.mjs";

const versionOf = (name) => JSON.parse(
  readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url), "utf8"),
).version;
const TASKS_EXTENSION = "io.modelcontextprotocol/tasks";

/** A subclass probes server/discover on the session's own process instead of a sibling (the SDK's rule). */
class InPlaceStdioClientTransport extends StdioClientTransport {}

/** onInputRequest for the package: a task's input waits until an "answer" step provides it. */
class InputBroker {
  constructor() {
    this.provided = new Map(); // `${taskId} ${inputId}` -> response
    this.waiting = new Map(); // same key -> deferred
    this.calls = [];
    this.callAnswer = undefined; // the running call step's "answer", for input_required on tools/call itself
    this.step = null; // the step under way, stamped on each answered call
  }

  /** The calls answered during step `index` (some were asked earlier and waited for it). */
  answeredIn(index) {
    return this.calls.filter((record) => record.step === index).map(({ step: _step, ...record }) => record);
  }

  async handle(request, context) {
    const record = {
      scope: context.scope, delivery: context.delivery, taskId: context.taskId ?? null,
      inputId: context.inputId ?? null, kind: request.kind, params: request.params ?? null,
    };
    this.calls.push(record);
    if (context.scope !== "task") {
      record.response = this.callAnswer === undefined ? { action: "cancel" } : elicitResponse(this.callAnswer, 0);
      record.step = this.step;
      return record.response;
    }
    const key = `${context.taskId} ${context.inputId}`;
    if (!this.provided.has(key)) {
      const waiter = this.waiting.get(key) ?? deferred();
      this.waiting.set(key, waiter);
      const signal = context.signal;
      const onAbort = () => waiter.reject(signal.reason ?? new Error("input lifetime ended"));
      signal?.addEventListener("abort", onAbort, { once: true });
      try {
        await waiter.promise;
      } finally {
        signal?.removeEventListener("abort", onAbort);
        this.waiting.delete(key);
      }
    }
    record.response = this.provided.get(key);
    record.step = this.step;
    return record.response;
  }

  provide(taskId, responses) {
    for (const [inputId, response] of Object.entries(responses)) {
      const key = `${taskId} ${inputId}`;
      this.provided.set(key, response);
      this.waiting.get(key)?.resolve();
    }
  }
}

function elicitResponse(step, index) {
  if (step.response !== undefined) return step.response;
  const action = step.action ?? "accept";
  if (action !== "accept") return { action };
  return { action, content: step.contents?.[index] ?? step.content ?? {} };
}

function jsonRpcAnswer(text, id) {
  if (typeof text !== "string") return undefined;
  try {
    const message = JSON.parse(text);
    return message?.id === id && ("error" in message || "result" in message) ? message : undefined;
  } catch {
    return undefined;
  }
}

function viewOf(view) {
  const { raw: _raw, extensions: _extensions, ...rest } = view;
  return rest;
}

function outcomeOf(outcome) {
  const out = { status: outcome.status };
  if (outcome.status === "completed") out.result = outcome.result;
  if (outcome.status === "failed") out.error = describeError(outcome.error);
  if (outcome.task !== undefined) out.task = viewOf(outcome.task);
  return out;
}

await main(async () => {
  const plan = readPlan();
  const requestTimeout = plan.request_timeout_ms ?? 60000;
  const protocolVersion = plan.protocol_version ?? "2026-07-28";
  const broker = new InputBroker();
  const clientErrors = [];

  const client = new Client(
    { name: "tracker-tasks-ext-client", version: "1.0.0" },
    {
      capabilities: plan.client_capabilities ?? { elicitation: { form: {} } },
      versionNegotiation: { mode: { pin: protocolVersion } },
    },
  );
  client.onerror = (err) => process.stderr.write(`ext_client: client error: ${err?.stack ?? err}\n`);

  let transport;
  if (Array.isArray(plan.command)) {
    const Transport = plan.stdio_probe === "in_place" ? InPlaceStdioClientTransport : StdioClientTransport;
    transport = new Transport({
      command: plan.command[0], args: plan.command.slice(1), env: serverEnv(plan), cwd: plan.cwd, stderr: "inherit",
    });
  } else {
    transport = new StreamableHTTPClientTransport(new URL(plan.url), { requestInit: { headers: plan.headers ?? {} } });
  }
  await client.connect(transport);
  if (client.getProtocolEra() !== "modern") throw new Error(`negotiated ${client.getProtocolEra()} era, not 2026-07-28`);

  // The host request coordinator the package's V2 path needs: string ids the SDK never uses, answers claimed here.
  const pending = new Map();
  const tap = new WireTap(transport, (message) => {
    if (message?.method !== undefined || message?.id === undefined) return false;
    const waiter = pending.get(String(message.id));
    if (waiter === undefined) return false;
    pending.delete(String(message.id));
    waiter.resolve(message);
    return true;
  });
  let nextId = 0;
  const rawDispatch = async (request, options = {}) => {
    const id = `ext-tasks-${++nextId}`;
    const waiter = deferred();
    pending.set(id, waiter);
    const timeoutMs = options.context?.requestTimeoutMs ?? requestTimeout;
    const timer = setTimeout(() => waiter.reject(new DispatchError(`${request.method} timed out after ${timeoutMs} ms`)),
      timeoutMs);
    const onAbort = () => waiter.reject(options.signal.reason ?? new DispatchError("aborted"));
    options.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      if (options.signal?.aborted) throw options.signal.reason ?? new DispatchError("aborted");
      await transport.send({ jsonrpc: "2.0", id, ...request }, options.context?.headers === undefined
        ? undefined : { headers: options.context.headers }).catch((err) => {
        // The SDK's HTTP transport hands on a JSON-RPC error body only with HTTP 400; with any other status (404 for
        // -32601, as the spec's HTTP mapping has it) it throws. Recover the server's answer from the body.
        const answer = jsonRpcAnswer(err?.data?.text, id);
        if (answer === undefined) {
          throw new DispatchError(`sending ${request.method} failed: ${err?.message ?? err}`, false, { cause: err });
        }
        tap.observe(answer, err.data.status);
        pending.delete(id);
        waiter.resolve(answer);
      });
      const message = await waiter.promise;
      return "error" in message ? { kind: "error", error: message.error } : { kind: "result", result: message.result };
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      pending.delete(id);
    }
  };

  const envelope = client._outboundMetaEnvelope(); // the SDK's own per-request _meta, so the framing matches it
  const framing = {
    protocolVersion: envelope[PROTOCOL_VERSION_META_KEY],
    clientInfo: envelope[CLIENT_INFO_META_KEY],
    clientCapabilities: envelope[CLIENT_CAPABILITIES_META_KEY],
  };
  const session = createTaskSessionFromClient(client, {
    endpointId: plan.url ?? plan.command.join(" "),
    rawDispatch,
    v2RequestFraming: framing,
    onInputRequest: (request, context) => broker.handle(request, context),
    onError: (err) => clientErrors.push(describeError(err)),
  });

  const taskIds = new Map();
  const executions = new Map(); // taskId -> {execution, driven}
  const ref = (step) => {
    if (typeof step.task !== "string") throw new Error(`step needs "task" (a name from "as", or a task id)`);
    return taskIds.get(step.task) ?? step.task;
  };
  const driven = (taskId) => executions.get(taskId)?.driven === true;

  const { wireFailure, request } = wireRequests(tap);
  const framed = (method, params, { extension = true } = {}) => {
    const capabilities = structuredClone(framing.clientCapabilities);
    const extensions = { ...(capabilities.extensions ?? {}) };
    if (extension) extensions[TASKS_EXTENSION] = {};
    else delete extensions[TASKS_EXTENSION];
    capabilities.extensions = extensions;
    return {
      method,
      params: {
        ...(params ?? {}),
        _meta: {
          ...(params?._meta ?? {}),
          [PROTOCOL_VERSION_META_KEY]: framing.protocolVersion,
          [CLIENT_INFO_META_KEY]: framing.clientInfo,
          [CLIENT_CAPABILITIES_META_KEY]: capabilities,
        },
      },
    };
  };
  const sendRaw = async (message) => {
    const mark = tap.mark();
    const response = await rawDispatch(message);
    const raw = tap.lastAnswer(mark, message.method);
    if (response.kind === "error") {
      throw rpcFailure(response.error, raw?.http_status === undefined ? {} : { http_status: raw.http_status });
    }
    return { result: raw ?? response.result };
  };
  const snapshot = async (taskId, observed) => {
    const { value, raw } = await request("tasks/get", () => session.task(taskId).snapshot(), observed);
    return { task: raw ?? value.raw, view: viewOf(value) };
  };

  const withClientErrors = (handler) => async (step, index) => {
    broker.step = index;
    const before = clientErrors.length;
    const attach = (observed) => (clientErrors.length > before
      ? { ...observed, client_errors: clientErrors.slice(before) } : observed);
    try {
      return attach(await handler(step, index));
    } catch (err) {
      throw failWith(err, attach({}));
    }
  };
  const handlers = {
    async info() {
      return {
        sdk: "@modelcontextprotocol/ext-tasks", sdk_version: versionOf("@modelcontextprotocol/ext-tasks"),
        client_sdk_version: versionOf("@modelcontextprotocol/client"),
        era: client.getProtocolEra(), protocol_version: client.getNegotiatedProtocolVersion() ?? null,
        server_version: client.getServerVersion() ?? null, server_capabilities: client.getServerCapabilities() ?? null,
        session_capabilities: session.capabilities,
      };
    },

    async list_tools() {
      const { value, raw } = await request("tools/list", () => client.listTools());
      return { tools: (raw ?? value).tools.map((tool) => ({ name: tool.name, execution: tool.execution ?? null })) };
    },

    async call(step, index) {
      const head = { tool: step.tool };
      const mark = tap.mark();
      broker.callAnswer = step.answer;
      let execution;
      try {
        execution = await session.callTool(step.tool, step.arguments ?? {}, {
          ...(step.preference === undefined ? {} : { task: { preference: step.preference } }),
          requestTimeoutMs: step.timeout_ms ?? requestTimeout,
        });
      } catch (err) {
        throw wireFailure(mark, "tools/call", err, head);
      } finally {
        broker.callAnswer = undefined;
      }
      const wire = tap.lastAnswer(mark, "tools/call");
      const rounds = tap.since(mark, "tools/call").length;
      const asked = broker.answeredIn(index);
      const extra = {
        ...(rounds > 1 ? { tools_call_rounds: rounds } : {}), ...(asked.length > 0 ? { handler_calls: asked } : {}),
      };
      if (execution.kind === "task") {
        const taskId = execution.handle.taskId;
        if (step.as !== undefined) taskIds.set(step.as, taskId);
        const entry = { execution, driven: plan.drive !== false };
        executions.set(taskId, entry);
        if (entry.driven) {
          void execution.result().finally(() => { entry.driven = false; });
        } else {
          await execution.detach();
        }
        return { ...head, as: step.as ?? null, mode: "task", taskId, created: wire, ...extra };
      }
      return { ...head, mode: "immediate", result: wire, outcome: outcomeOf(await execution.result()), ...extra };
    },

    async get(step) {
      return snapshot(ref(step));
    },

    async wait(step) {
      const taskId = ref(step);
      const until = step.until ?? TERMINAL;
      const deadline = Date.now() + (step.timeout_ms ?? 20000);
      let polls = 0;
      let seen = {};
      for (;;) {
        seen = await snapshot(taskId, () => ({ ...seen, polls }));
        polls += 1;
        const status = seen.task?.status;
        if (until.includes(status)) return { ...seen, polls };
        if (TERMINAL.includes(status)) {
          throw failWith(Object.assign(new Error(`task is ${status}, not one of ${until.join(", ")}`),
            { code: "unexpected_status" }), { ...seen, polls });
        }
        const interval = step.poll_ms ?? Math.max(10, seen.task?.pollIntervalMs ?? 1000);
        if (Date.now() + interval > deadline) {
          throw failWith(Object.assign(new Error(`task still ${status} after ${polls} polls`), { code: "timeout" }),
            { ...seen, polls });
        }
        await sleep(interval);
      }
    },

    async answer(step, index) {
      const taskId = ref(step);
      const mark = tap.mark();
      const { task } = await snapshot(taskId);
      const inputRequests = task?.inputRequests ?? {};
      const keys = Object.keys(inputRequests);
      if (task?.status !== "input_required" || keys.length === 0) {
        throw failWith(Object.assign(new Error(`task is ${task?.status} with ${keys.length} input requests`),
          { code: "no_input_requested" }), { task });
      }
      const responses = Object.fromEntries(keys.map((key, index) => [key, elicitResponse(step, index)]));
      const timeout = step.timeout_ms ?? 30000;
      const observed = (extra) => ({
        input_requests: inputRequests, ...extra, handler_calls: broker.answeredIn(index),
      });
      if (!driven(taskId)) {
        try {
          await session.task(taskId).update(responses);
        } catch (err) {
          throw wireFailure(mark, "tasks/update", err, observed({ input_responses: responses, via: "controller" }));
        }
        return observed({ input_responses: responses, ack: tap.lastAnswer(mark, "tasks/update"), via: "controller" });
      }
      broker.provide(taskId, responses);
      // The package's driver answers on its next poll: wait for its tasks/update(s) covering every key.
      const sent = {};
      const acks = [];
      const covered = async () => {
        for (;;) {
          const entry = await tap.waitFor((e) => e.method === "tasks/update" && e.params?.taskId === taskId
            && !acks.some((a) => a.entry === e) && tap.exchanges.indexOf(e) >= mark);
          acks.push({ entry });
          Object.assign(sent, entry.params.inputResponses ?? {});
          if ("error" in entry) throw rpcFailure(entry.error);
          if (keys.every((key) => key in sent)) return entry.result;
        }
      };
      try {
        const ack = await withTimeout(covered(), timeout, "the package's tasks/update");
        return observed({ input_responses: sent, ack, via: "driver", ...(acks.length > 1 ? { updates: acks.length } : {}) });
      } catch (err) {
        throw failWith(err, observed({ input_responses: sent, via: "driver" }));
      }
    },

    async outcome(step) {
      const entry = executions.get(ref(step));
      if (entry === undefined) throw new Error(`no execution for task ${step.task} in this session`);
      const timeout = step.timeout_ms ?? 30000;
      return { outcome: outcomeOf(await withTimeout(entry.execution.result(), timeout, "the execution's outcome")) };
    },

    async cancel(step) {
      const taskId = ref(step);
      const mark = tap.mark();
      try {
        await session.cancelTask(taskId);
      } catch (err) {
        throw wireFailure(mark, "tasks/cancel", err);
      }
      const sent = tap.since(mark, "tasks/cancel").length > 0;
      return { ack: tap.lastAnswer(mark, "tasks/cancel") ?? null, ...(sent ? {} : { sent: false }) };
    },

    async result(step) {
      return sendRaw(framed("tasks/result", { taskId: ref(step) }));
    },

    async list(step) {
      return sendRaw(framed("tasks/list", step.cursor === undefined ? {} : { cursor: step.cursor }));
    },

    async raw(step) {
      const message = step.envelope === false
        ? { method: step.method, ...(step.params === undefined ? {} : { params: step.params }) }
        : framed(step.method, step.params, { extension: step.extension !== false });
      return { method: step.method, ...(await sendRaw(message)) };
    },

    async sleep(step) {
      await sleep(step.ms ?? 0);
      return {};
    },
  };
  await runSteps(plan, Object.fromEntries(Object.entries(handlers).map(([kind, fn]) => [kind, withClientErrors(fn)])));

  // Leave the server's tasks as they are: detach (closing an unsettled execution would cancel its task).
  for (const { execution } of executions.values()) {
    await execution.detach();
    await execution.result();
  }
  // The package lists tools in the background (its tool declarations): let that answer land before closing.
  for (let waited = 0; tap.exchanges.some((e) => !e.answered) && waited < 2000; waited += 20) await sleep(20);
  await session.close();
  await client.close();
});
