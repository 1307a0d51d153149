// MCP tasks as of protocol revision 2025-11-25 (experimental, core), driven by the official TypeScript SDK 1.x
// (@modelcontextprotocol/sdk, `client.experimental.tasks`): the client asks for a task with params.task {ttl},
// polls tasks/get, fetches tasks/result, lists and cancels; input arrives as elicitation/create requests from the
// server while the client waits in tasks/result (the SDK's idiom: requestStream calls tasks/result on
// input_required, and the Client's elicitation handler answers).
//
//   node v1_client.mjs '<plan JSON>' | plan.json
//
// Plan: {"command": [argv...] (stdio; the server inherits this process's environment plus "env", in "cwd")
//        | "url": "http://127.0.0.1:PORT/mcp" (Streamable HTTP) with optional "headers": {...},
//        "client_capabilities": {...} (default {"elicitation": {"form": {}}}, what the SDK's own task example sends),
//        "ttl": ms (default 60000, the ttl asked for by "call"), "request_timeout_ms": ms (default 60000),
//        "steps": [...]}
// Steps, each printing one line {"step": i, "kind": ..., ...observed, "elapsed_ms"}, or
// {"step": i, "kind": ..., "error": {code, message, data?}} (the server's JSON-RPC error verbatim where there was one;
// else the SDK's error, e.g. a schema rejection) and the next step still runs:
//   {"kind":"info"}                          -> server capabilities and version, the SDK's version
//   {"kind":"list_tools"}                    -> {"tools": [{name, execution}]}
//   {"kind":"call","tool":..,"arguments":{..},"as":"t1", "task": true|false (default: the tool's taskSupport is
//    optional or required), "ttl": ms|null}  -> {"mode":"task","task":{...created},"raw":{wire result}} or
//    {"mode":"plain","result":{...}}; a task's id is remembered under "as"
//   {"kind":"get","task":"t1"}               -> {"task": {...}} (tasks/get; "raw" is the wire result)
//   {"kind":"wait","task":"t1","until":[...],"timeout_ms":20000,"poll_ms":N} -> polls tasks/get every pollInterval
//    (or poll_ms) until the status is in "until": {"task", "polls"}; a terminal status outside "until" or the
//    timeout is an error (code "unexpected_status" / "timeout") that still carries "task" and "polls"
//   {"kind":"result","task":"t1","timeout_ms":30000} -> tasks/result: {"result": {... with _meta}, "elicitations"}
//   {"kind":"answer","task":"t1","action":"accept","content":{..},"contents":[{..},..]} -> registers the answer
//    for the task's elicitations (the i-th elicitation gets contents[i], else content), answers any that already
//    arrived, then waits in tasks/result: {"elicitations": [{related_task, params, response}], "result": {...}}
//   {"kind":"cancel","task":"t1"}            -> tasks/cancel: {"task": {...cancelled}}
//   {"kind":"list","cursor":..}              -> tasks/list: {"result": {tasks, nextCursor?}}
//   {"kind":"raw","method":..,"params":{..}} -> {"result": {...}} (any request; params sent as given)
//   {"kind":"sleep","ms":N}
// A "task" field names a task remembered by "as", or is taken as a literal task id.
// Any other failure prints {"error": "..."} and exits 1. The server's stderr passes through to this stderr.

import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CallToolResultSchema, ElicitRequestSchema, ResultSchema } from "@modelcontextprotocol/sdk/types.js";
import {
  TERMINAL, WireTap, wireRequests, deferred, failWith, main, readPlan, rpcFailure, runSteps, serverEnv, sleep, withTimeout,
} from "./common.mjs";

const SDK_VERSION = JSON.parse(
  readFileSync(new URL("./node_modules/@modelcontextprotocol/sdk/package.json", import.meta.url), "utf8"),
).version;
const RELATED_TASK = "io.modelcontextprotocol/related-task";

/** Answers the server's elicitation/create requests with what an "answer" step gave for their task. */
class ElicitationBroker {
  constructor() {
    this.answers = new Map(); // taskId -> {action, content, contents, used}
    this.pending = []; // {taskId, record, waiter}
    this.seen = []; // {related_task, params, response?}
    this.current = null; // the task of the answer step under way
  }

  async handle(request) {
    const related = request.params?._meta?.[RELATED_TASK]?.taskId ?? null;
    const record = { related_task: related, params: request.params };
    this.seen.push(record);
    const taskId = related ?? this.current;
    let response = this.take(taskId);
    if (response === undefined) {
      const waiter = deferred();
      this.pending.push({ taskId, record, waiter });
      response = await waiter.promise;
    }
    record.response = response;
    return response;
  }

  take(taskId) {
    const answer = this.answers.get(taskId);
    if (answer === undefined) return undefined;
    const content = answer.contents?.[answer.used] ?? answer.content ?? {};
    answer.used += 1;
    return answer.action === "accept" ? { action: "accept", content } : { action: answer.action };
  }

  provide(taskId, answer) {
    this.answers.set(taskId, { ...answer, used: 0 });
    for (const entry of [...this.pending]) {
      if (entry.taskId !== taskId && entry.taskId !== null) continue;
      this.pending.splice(this.pending.indexOf(entry), 1);
      entry.waiter.resolve(this.take(taskId));
    }
  }

  withdraw(taskId) {
    this.answers.delete(taskId);
  }
}

await main(async () => {
  const plan = readPlan();
  const requestTimeout = plan.request_timeout_ms ?? 60000;
  const broker = new ElicitationBroker();

  const client = new Client(
    { name: "tracker-tasks-v1-client", version: "1.0.0" },
    { capabilities: plan.client_capabilities ?? { elicitation: { form: {} } } },
  );
  client.setRequestHandler(ElicitRequestSchema, async (request) => broker.handle(request));
  client.onerror = (err) => process.stderr.write(`v1_client: client error: ${err?.stack ?? err}\n`);

  const transport = Array.isArray(plan.command)
    ? new StdioClientTransport({
      command: plan.command[0], args: plan.command.slice(1), env: serverEnv(plan), cwd: plan.cwd, stderr: "inherit",
    })
    : new StreamableHTTPClientTransport(new URL(plan.url), { requestInit: { headers: plan.headers ?? {} } });
  await client.connect(transport);
  const tap = new WireTap(transport);

  let tools = new Map();
  const refreshTools = async () => {
    const mark = tap.mark();
    const listed = await client.listTools();
    tools = new Map(listed.tools.map((tool) => [tool.name, tool]));
    return tap.lastAnswer(mark, "tools/list") ?? listed;
  };
  await refreshTools();

  const taskIds = new Map();
  const ref = (step) => {
    if (typeof step.task !== "string") throw new Error(`step needs "task" (a name from "as", or a task id)`);
    return taskIds.get(step.task) ?? step.task;
  };

  const { wireFailure, request } = wireRequests(tap);

  const tasks = client.experimental.tasks;

  await runSteps(plan, {
    async info() {
      return {
        sdk: "@modelcontextprotocol/sdk", sdk_version: SDK_VERSION,
        server_version: client.getServerVersion() ?? null,
        server_capabilities: client.getServerCapabilities() ?? null,
        protocol_version: transport.protocolVersion ?? null,
      };
    },

    async list_tools() {
      const raw = await refreshTools();
      return { tools: (raw.tools ?? []).map((tool) => ({ name: tool.name, execution: tool.execution ?? null })) };
    },

    async call(step) {
      const params = { name: step.tool, arguments: step.arguments ?? {} };
      const support = tools.get(step.tool)?.execution?.taskSupport ?? null;
      const asTask = step.task ?? (support === "optional" || support === "required");
      const timeout = step.timeout_ms ?? requestTimeout;
      const head = { tool: step.tool, task_support: support };
      if (!asTask) {
        // Client.callTool refuses a required-task tool before sending; a plain call to one goes out as a request.
        const { value, raw } = await request("tools/call", () => (support === "required"
          ? client.request({ method: "tools/call", params }, CallToolResultSchema, { timeout })
          : client.callTool(params, CallToolResultSchema, { timeout })), () => head);
        return { ...head, mode: "plain", result: value, raw };
      }
      const ttl = step.ttl === undefined ? (plan.ttl ?? 60000) : step.ttl;
      const mark = tap.mark();
      // The SDK's task call: the first message of callToolStream is the created task (or an error); stop there so
      // that the plan's own steps do the polling.
      const stream = tasks.callToolStream(params, CallToolResultSchema, { task: ttl === null ? {} : { ttl }, timeout });
      const first = (await stream.next()).value;
      await stream.return();
      const raw = tap.lastAnswer(mark, "tools/call");
      if (first?.type === "taskCreated") {
        if (step.as !== undefined) taskIds.set(step.as, first.task.taskId);
        return { ...head, as: step.as ?? null, mode: "task", task: first.task, raw };
      }
      if (first?.type === "result") return { ...head, mode: "plain", result: first.result, raw };
      throw wireFailure(mark, "tools/call", first?.error ?? new Error("callToolStream yielded nothing"), head);
    },

    async get(step) {
      const { value, raw } = await request("tasks/get", () => tasks.getTask(ref(step), { timeout: requestTimeout }));
      return { task: value, raw };
    },

    async wait(step) {
      const taskId = ref(step);
      const until = step.until ?? TERMINAL;
      const deadline = Date.now() + (step.timeout_ms ?? 20000);
      let polls = 0;
      let task;
      let raw;
      for (;;) {
        ({ value: task, raw } = await request("tasks/get", () => tasks.getTask(taskId, { timeout: requestTimeout }),
          () => ({ task, polls })));
        polls += 1;
        if (until.includes(task.status)) return { task, raw, polls };
        if (TERMINAL.includes(task.status)) {
          throw failWith(Object.assign(new Error(`task is ${task.status}, not one of ${until.join(", ")}`),
            { code: "unexpected_status" }), { task, raw, polls });
        }
        const interval = step.poll_ms ?? task.pollInterval ?? 1000;
        if (Date.now() + interval > deadline) {
          throw failWith(Object.assign(new Error(`task still ${task.status} after ${polls} polls`), { code: "timeout" }),
            { task, raw, polls });
        }
        await sleep(interval);
      }
    },

    async result(step) {
      const taskId = ref(step);
      const seen = broker.seen.length;
      const timeout = step.timeout_ms ?? 30000;
      const elicitations = () => ({ elicitations: broker.seen.slice(seen) });
      const { value, raw } = await request("tasks/result", () => withTimeout(
        tasks.getTaskResult(taskId, CallToolResultSchema, { timeout }), timeout + 1000, "tasks/result"), elicitations);
      return { result: value, raw, ...elicitations() };
    },

    async answer(step) {
      const taskId = ref(step);
      const seenBefore = broker.seen.filter((record) => record.response === undefined);
      const seen = broker.seen.length;
      const timeout = step.timeout_ms ?? 30000;
      broker.current = taskId;
      broker.provide(taskId, { action: step.action ?? "accept", content: step.content, contents: step.contents });
      const elicitations = () => ({ elicitations: [...seenBefore, ...broker.seen.slice(seen)] });
      try {
        const { value, raw } = await request("tasks/result", () => withTimeout(
          tasks.getTaskResult(taskId, CallToolResultSchema, { timeout }), timeout + 1000, "tasks/result"), elicitations);
        return { result: value, raw, ...elicitations() };
      } finally {
        broker.current = null;
        broker.withdraw(taskId);
      }
    },

    async cancel(step) {
      const { value, raw } = await request("tasks/cancel", () => tasks.cancelTask(ref(step), { timeout: requestTimeout }));
      return { task: value, raw };
    },

    async list(step) {
      const { value, raw } = await request("tasks/list", () => tasks.listTasks(step.cursor, { timeout: requestTimeout }));
      return { result: value, raw };
    },

    async raw(step) {
      const params = step.params;
      const { raw } = await request(step.method, () => client.request(
        params === undefined ? { method: step.method } : { method: step.method, params },
        ResultSchema, { timeout: step.timeout_ms ?? requestTimeout }));
      return { method: step.method, result: raw };
    },

    async sleep(step) {
      await sleep(step.ms ?? 0);
      return {};
    },
  });

  await client.close();
});
