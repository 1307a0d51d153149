"""The 2025-11-25 tasks surface beyond its methods, as ServerMiddleware (the SDK's tools/call interceptor cannot
answer a 2025-11-25 create, which is no CallToolResult): `capabilities.tasks` in initialize, `execution.taskSupport`
in tools/list, and tools/call with `params.task` answered with a created task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError

from ..caller import current_subject
from . import wire
from .runtime import NewTask

if TYPE_CHECKING:
    from .extension import TrackerTasks


class LegacyTasks:
    """Passes every 2026-07-28 request through untouched."""

    def __init__(self, tasks: TrackerTasks) -> None:
        self.tasks = tasks

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.request_id is None or wire.is_modern(ctx.protocol_version):
            return await call_next(ctx)
        if ctx.method == "initialize":
            result = await call_next(ctx)
            if isinstance(result, dict) and result.get("protocolVersion") == wire.LEGACY:
                capabilities = result.setdefault("capabilities", {})
                offered: dict[str, Any] = {"cancel": {}, "requests": {"tools": {"call": {}}}}
                if current_subject() is not None:
                    offered["list"] = {}
                capabilities["tasks"] = offered
            return result
        if ctx.protocol_version != wire.LEGACY:
            return await call_next(ctx)
        if ctx.method == "tools/list":
            result = await call_next(ctx)
            if isinstance(result, dict):
                for tool in result.get("tools", []):
                    policy = self.tasks.policies.get(tool.get("name"))
                    if policy is not None:
                        tool["execution"] = {"taskSupport": policy.support}
            return result
        if ctx.method == "tools/call" and isinstance(ctx.params, Mapping):
            return await self._call(ctx, ctx.params, call_next)
        return await call_next(ctx)

    async def _call(self, ctx: ServerRequestContext[Any, Any], params: Mapping[str, Any], call_next: CallNext) -> Any:
        name = params.get("name")
        policy = self.tasks.policies.get(name) if isinstance(name, str) else None
        wanted = params.get("task")
        if wanted is None:
            if policy is not None and policy.support == "required":
                raise MCPError(code=wire.METHOD_NOT_FOUND, message=f"tool {name} runs only as a task: send params.task")
            return await call_next(ctx)
        if not isinstance(wanted, dict):
            raise wire.invalid("task must be an object, such as {\"ttl\": 60000}")
        if policy is None or not policy.takes_tasks:
            raise MCPError(code=wire.METHOD_NOT_FOUND, message=f"tool {name} does not run as a task")
        arguments = params.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise wire.invalid("arguments must be an object")
        await self.tasks.open_database()
        refused = self.tasks.refusal(name, arguments)  # type: ignore[arg-type]
        if refused is not None:
            answer = refused.model_dump(by_alias=True, mode="json", exclude_none=True)
            return {key: value for key, value in answer.items() if key != "resultType"}  # not on this revision
        new = NewTask(tool=name, arguments=arguments, revision=wire.LEGACY, subject=current_subject(), rerun=policy.rerun)  # type: ignore[arg-type]
        return {"task": wire.legacy_task(await self.tasks.runtime.begin(new), self.tasks.tracker.settings)}
