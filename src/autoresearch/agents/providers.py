"""Clients for the two wire formats LLM servers speak: Chat Completions and Messages.

`OpenAIChatClient` serves every server that speaks the Chat Completions format: hosted
APIs, OpenRouter, vLLM, Ollama and llama.cpp's server. `AnthropicMessagesClient` speaks
the Messages format. Both expose `complete(...) -> Completion` and turn every failure
into one of the error classes below, so the retry table can decide by kind. Only the
standard library is used: no SDK to install, and the same code path in tests as in use.
"""
from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

from autoresearch.agents.retry import parse_retry_after

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
ERROR_BODY_CHARS = 500  # how much of a server's error text goes into a message


@dataclass
class Completion:
    text: str
    input_tokens: int
    output_tokens: int
    model: str  # as the server reports it (may be a dated snapshot of the requested one)
    truncated: bool = False  # the reply stopped at max_tokens


# ----------------------------------------------------------------------------------
# Errors, one class per kind; `kind` is the key of the retry table


class ProviderError(Exception):
    kind = "provider"


class AuthError(ProviderError):
    kind = "auth"


class RateLimited(ProviderError):
    kind = "rate_limited"

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ServerError(ProviderError):
    kind = "server"

    def __init__(self, message: str, status: int = 500, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class Timeout(ProviderError):
    kind = "timeout"


class ConnectionFailed(ProviderError):
    kind = "connection"


class BadResponse(ProviderError):
    kind = "bad_response"


class RequestRejected(ProviderError):
    """Any other 4xx: unknown model, prompt too long, malformed request."""

    kind = "rejected"


# ----------------------------------------------------------------------------------
# One POST of a JSON body, with HTTP and socket failures mapped to the classes above


def _server_message(body: bytes) -> str:
    """The error text a server sent back; both formats nest it under "error"."""
    text = body.decode("utf-8", errors="replace")
    try:
        error = json.loads(text).get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:ERROR_BODY_CHARS]
        if isinstance(error, str):
            return error[:ERROR_BODY_CHARS]
    except (ValueError, AttributeError):
        pass
    return text.strip()[:ERROR_BODY_CHARS]


def _error_for_status(status: int, headers, body: bytes, url: str, key_env: str) -> ProviderError:
    detail = _server_message(body) or "(no message)"
    where = f"HTTP {status} from {url}"
    if status in (401, 403):
        return AuthError(f"the server refused the credentials ({where}: {detail}); "
                         f"set {key_env} or pass --api-key with a valid key")
    retry_after = parse_retry_after(headers.get("Retry-After") if headers else None)
    if status == 429:
        return RateLimited(f"rate limited ({where}: {detail})", retry_after)
    if status >= 500:  # includes Anthropic's 529 "overloaded"
        return ServerError(f"server error ({where}: {detail})", status, retry_after)
    return RequestRejected(f"request rejected ({where}: {detail})")


def post_json(url: str, headers: dict, body: dict, timeout: float, key_env: str) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as error:
        raise _error_for_status(error.code, error.headers, error.read(), url, key_env) from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise Timeout(f"no reply from {url} within {timeout:g} s") from None
        raise ConnectionFailed(f"cannot reach {url}: {error.reason}") from None
    except TimeoutError:  # raised while waiting for the reply, after the request went out
        raise Timeout(f"no reply from {url} within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as error:  # reset, closed mid-reply, ...
        raise ConnectionFailed(f"connection to {url} failed: {error!r}") from None
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise BadResponse(f"reply from {url} is not JSON: {raw[:200]!r}") from None
    if not isinstance(parsed, dict):
        raise BadResponse(f"reply from {url} is not a JSON object: {raw[:200]!r}")
    return parsed


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# ----------------------------------------------------------------------------------
# Chat Completions


class OpenAIChatClient:
    key_env = "OPENAI_API_KEY"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 120):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        # "json_schema" (OpenAI, vLLM, Ollama, llama.cpp's own server) or "json_object" with a
        # schema (llama-cpp-python's server); switched once when a server refuses the first
        self.schema_style = "json_schema"

    def request_body(self, system: str, messages: list[dict], json_schema: dict | None, max_tokens: int) -> dict:
        body = {"model": self.model, "max_tokens": max_tokens,
                "messages": [{"role": "system", "content": system}, *messages]}
        if json_schema is not None and self.schema_style == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "reply", "strict": True, "schema": json_schema}}
        elif json_schema is not None:
            body["response_format"] = {"type": "json_object", "schema": json_schema}
        return body

    def complete(self, system: str, messages: list[dict], *, json_schema: dict | None = None,
                 max_tokens: int = 4096) -> Completion:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = f"{self.base_url}/chat/completions"
        try:
            reply = post_json(url, headers, self.request_body(system, messages, json_schema, max_tokens),
                              self.timeout, self.key_env)
        except (ServerError, RequestRejected) as error:
            if json_schema is None or self.schema_style != "json_schema" or "response_format" not in str(error):
                raise
            self.schema_style = "json_object"  # this server wants the other spelling of a schema
            reply = post_json(url, headers, self.request_body(system, messages, json_schema, max_tokens),
                              self.timeout, self.key_env)
        try:
            choice = reply["choices"][0]
            content = choice["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise BadResponse(f"reply has no choices[0].message: {json.dumps(reply)[:300]}") from None
        if isinstance(content, list):  # some servers send content as a list of parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        return Completion(text=content if isinstance(content, str) else "",
                          input_tokens=_count(usage.get("prompt_tokens")),
                          output_tokens=_count(usage.get("completion_tokens")),
                          model=str(reply.get("model") or self.model),
                          truncated=choice.get("finish_reason") == "length")


# ----------------------------------------------------------------------------------
# Messages


class AnthropicMessagesClient:
    key_env = "ANTHROPIC_API_KEY"

    def __init__(self, base_url: str, model: str, api_key: str, timeout: float = 120):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = timeout

    def request_body(self, system: str, messages: list[dict], max_tokens: int) -> dict:
        return {"model": self.model, "max_tokens": max_tokens, "system": system, "messages": list(messages)}

    def complete(self, system: str, messages: list[dict], *, json_schema: dict | None = None,
                 max_tokens: int = 4096) -> Completion:
        # The Messages format has no portable schema option: structured mode states the
        # schema in the prompt, and json_schema is accepted only to keep one interface.
        headers = {"x-api-key": self.api_key or "", "anthropic-version": ANTHROPIC_VERSION}
        reply = post_json(f"{self.base_url}/v1/messages", headers,
                          self.request_body(system, messages, max_tokens), self.timeout, self.key_env)
        blocks = reply.get("content")
        if not isinstance(blocks, list):
            raise BadResponse(f"reply has no content list: {json.dumps(reply)[:300]}")
        text = "".join(block.get("text", "") for block in blocks
                       if isinstance(block, dict) and block.get("type") == "text")
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        input_tokens = sum(_count(usage.get(key)) for key in
                           ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        return Completion(text=text, input_tokens=input_tokens, output_tokens=_count(usage.get("output_tokens")),
                          model=str(reply.get("model") or self.model),
                          truncated=reply.get("stop_reason") == "max_tokens")


# ----------------------------------------------------------------------------------
# Choosing a client by provider name, with defaults from the environment


def make_client(provider: str, *, model: str | None = None, base_url: str | None = None,
                api_key: str | None = None, timeout: float = 120):
    model = model or os.environ.get("AUTORESEARCH_MODEL")
    if not model:
        raise ValueError(f"no model for the {provider} agent: pass --model NAME "
                         "(or set AUTORESEARCH_MODEL)")
    if provider == "openai":
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        # local servers (llama.cpp, vLLM, Ollama) need no key; the hosted API does
        if not api_key and base_url.rstrip("/") == OPENAI_DEFAULT_BASE_URL:
            raise ValueError("set OPENAI_API_KEY (or pass --api-key), or point --base-url at a local server")
        return OpenAIChatClient(base_url, model, api_key, timeout)
    if provider == "anthropic":
        base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or ANTHROPIC_DEFAULT_BASE_URL
        api_key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not api_key:
            raise ValueError("set ANTHROPIC_API_KEY (or pass --api-key)")
        return AnthropicMessagesClient(base_url, model, api_key, timeout)
    raise ValueError(f"unknown provider {provider!r}; available: openai, anthropic")
