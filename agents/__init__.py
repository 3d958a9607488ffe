"""Agent tools: the retrieval backend as scoped, audited tools (HTTP/OpenAPI and MCP)."""
