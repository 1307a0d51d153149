// Drives an MCP server with the official TypeScript SDK client, as a default client would: a stdio server it starts,
// or a Streamable HTTP server already listening.
//
// Input, one JSON document on stdin:
//   {"server": {"command": "...", "args": [...], "env": {...}, "cwd": "..."}   (stdio)
//           or {"url": "http://127.0.0.1:PORT/mcp", "headers": {"Authorization": "Bearer ..."}}   (Streamable HTTP),
//    "calls": [{"tool": "name", "arguments": {...},
//               "options": {"timeout": ms, "resetTimeoutOnProgress": bool, "maxTotalTimeout": ms, "progress": bool}}]}
// "options" is optional; without it a call gets the SDK's defaults (a 60 s request timeout, no progress token).
// "progress": true asks for progress notifications (the SDK sends a progressToken) and records them.
// "abort_after_ms": N cancels the call after N ms through an AbortSignal (the SDK sends notifications/cancelled).
// A call may take arguments from an earlier call's answer: "arguments_from": {"request_id": [index, "operation_id"]}
// (index into the calls, then keys into its structuredContent). "until_not": {"status": "running"} repeats the
// call every "every_ms" (default 2000) until that field differs, at most "max_ms" (default 180000); the entry
// records the last answer and "attempts". An entry {"sleep_ms": N} only waits.
// "nested_arguments": N adds an argument "a" nested N levels deep ({"a": {"a": ... "leaf"}}), to test the server.
//
// Output, one JSON document on stdout:
//   {"sdk_version": "...", "server": {name, version} | null, "tools": [{name, description, inputSchema, outputSchema, annotations}],
//    "calls": [{"tool", "result": {isError, structuredContent, content: [text...]}, "progress": [...], "elapsed_ms"}
//              | {"tool", "error": {message, code, name}, "progress": [...], "elapsed_ms"}],
//    "stderr": "the server's stderr" (stdio; "" over HTTP)}
// A failure before the calls (spawn, initialize, tools/list) prints {"fatal": {...}, "stderr": ...} and exits 1.
// The calls run one after another; an error in one call is recorded and the next call still runs.

import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

// Read from the file: the package's "exports" map "./*" to dist/, so an import of its package.json finds another one.
const SDK_VERSION = JSON.parse(
  readFileSync(new URL("./node_modules/@modelcontextprotocol/sdk/package.json", import.meta.url), "utf8"),
).version;

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

function describeError(err) {
  return { message: String(err?.message ?? err), code: err?.code ?? null, name: err?.name ?? null };
}

function shapeResult(result) {
  return {
    isError: result.isError ?? false,
    structuredContent: result.structuredContent ?? null,
    content: (result.content ?? []).map((part) => (part.type === "text" ? part.text : { type: part.type })),
  };
}

async function listAllTools(client) {
  const tools = [];
  let cursor;
  do {
    const page = await client.listTools(cursor === undefined ? undefined : { cursor });
    tools.push(...page.tools);
    cursor = page.nextCursor;
  } while (cursor);
  return tools.map((tool) => ({
    name: tool.name,
    description: tool.description ?? null,
    inputSchema: tool.inputSchema ?? null,
    outputSchema: tool.outputSchema ?? null,
    annotations: tool.annotations ?? null,
  }));
}

function nested(depth) {
  let value = "leaf";
  for (let n = 0; n < depth; n++) value = { a: value };
  return value;
}

function argumentsOf(call, done) {
  const args = { ...(call.arguments ?? {}) };
  if (call.nested_arguments) args.a = nested(call.nested_arguments);
  for (const [name, [index, ...path]] of Object.entries(call.arguments_from ?? {})) {
    let value = done[index]?.result?.structuredContent;
    for (const key of path) value = value?.[key];
    args[name] = value;
  }
  return args;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function callOnce(client, call, done) {
  const { progress: wantProgress, abort_after_ms: abortAfter, ...requestOptions } = call.options ?? {};
  const progress = [];
  if (wantProgress) requestOptions.onprogress = (notification) => progress.push({ ...notification, at_ms: Date.now() });
  let timer;
  if (abortAfter !== undefined) {
    const controller = new AbortController();
    requestOptions.signal = controller.signal;
    timer = setTimeout(() => controller.abort("cancelled by the test"), abortAfter);
  }
  const started = Date.now();
  try {
    const result = await client.callTool({ name: call.tool, arguments: argumentsOf(call, done) }, undefined, requestOptions);
    return { tool: call.tool, result: shapeResult(result), progress, elapsed_ms: Date.now() - started };
  } catch (err) {
    return { tool: call.tool, error: describeError(err), progress, elapsed_ms: Date.now() - started };
  } finally {
    clearTimeout(timer);
  }
}

async function runCall(client, call, done) {
  if (call.sleep_ms !== undefined) {
    await sleep(call.sleep_ms);
    return { sleep_ms: call.sleep_ms };
  }
  if (!call.until_not) return callOnce(client, call, done);
  const [[field, value]] = Object.entries(call.until_not);
  const started = Date.now();
  let attempts = 0;
  for (;;) {
    const entry = await callOnce(client, call, done);
    attempts += 1;
    const answer = entry.result?.structuredContent;
    if (!answer || answer[field] !== value || Date.now() - started > (call.max_ms ?? 180000)) {
      return { ...entry, attempts, elapsed_ms: Date.now() - started };
    }
    await sleep(call.every_ms ?? 2000);
  }
}

async function main() {
  const input = await readStdin();
  let stderr = "";
  let transport;
  if (input.server.url) {
    const { url, headers = {} } = input.server;
    transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
  } else {
    const { command, args = [], env, cwd } = input.server;
    transport = new StdioClientTransport({ command, args, env, cwd, stderr: "pipe" });
    transport.stderr?.on("data", (chunk) => (stderr += chunk.toString("utf8")));
  }
  const client = new Client({ name: "tracker-ts-client", version: "1.0.0" });
  const output = { sdk_version: SDK_VERSION, server: null, tools: [], calls: [], started_ms: Date.now() };
  let fatal = null;
  try {
    await client.connect(transport);
    output.server = client.getServerVersion() ?? null;
    output.tools = await listAllTools(client);
    for (const call of input.calls ?? []) output.calls.push(await runCall(client, call, output.calls));
  } catch (err) {
    fatal = describeError(err);
  } finally {
    await client.close().catch(() => {});
  }
  output.stderr = stderr;
  if (fatal) {
    process.stdout.write(JSON.stringify({ fatal, stderr }) + "\n");
    process.exitCode = 1;
  } else {
    process.stdout.write(JSON.stringify(output) + "\n");
  }
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ fatal: describeError(err), stderr: "" }) + "\n");
  process.exitCode = 1;
});
