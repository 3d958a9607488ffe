"""The agent tools as an MCP server (stdio): `clinstream mcp`.

Each tool is forwarded to the API's `POST /agent/tools/{name}` with the agent's own token, so
scope checks and the AuditEvent happen in one place, whichever way an agent calls.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from agents.tools import TOOLS


def build_server(client: httpx.AsyncClient) -> Server[Any]:
    """An MCP server whose tools call the API through ``client`` (base URL and agent token set)."""

    async def list_tools(_ctx: Any, _params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(name=t.name, description=t.description, input_schema=t.input_schema())
                for t in TOOLS.values()
            ]
        )

    async def call_tool(_ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        try:
            response = await client.post(f"/agent/tools/{params.name}", json=params.arguments or {})
        except httpx.HTTPError as exc:
            text = json.dumps(
                {"status": 503, "detail": f"the clinstream API is unreachable ({type(exc).__name__})"}
            )
            return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)
        text = response.text
        if response.status_code >= 400:
            return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)], structured_content=response.json()
        )

    return Server("clinstream", version="1", on_list_tools=list_tools, on_call_tool=call_tool)


async def serve_stdio(api_url: str, token: str) -> None:
    """Serve MCP on stdin/stdout until the client closes it."""
    async with httpx.AsyncClient(
        base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=120.0
    ) as client:
        server = build_server(client)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
