"""The wire-format clients against real HTTP servers on 127.0.0.1 that replay scripted replies.

The scripted server lives in llm_server.py, shared with the agent and loop tests.
"""
from __future__ import annotations

import socket
import time

import pytest

from autoresearch.agents.providers import (AnthropicMessagesClient, AuthError, BadResponse, Completion,
                                           ConnectionFailed, OpenAIChatClient, RateLimited, RequestRejected,
                                           ServerError, Timeout, make_client)

from llm_server import Reply, ScriptedServer, SeenRequest, anthropic_reply, error_reply, openai_reply


SYSTEM = "You improve train.py."
MESSAGES = [{"role": "user", "content": "Propose one change."}]


# ----------------------------------------------------------------------------------
# Chat Completions


def test_openai_request_has_the_chat_completions_shape_and_bearer_key():
    with ScriptedServer([openai_reply("hello", 12, 3)]) as server:
        client = OpenAIChatClient(server.url + "/v1/", "test-model", api_key="sk-test", timeout=5)
        completion = client.complete(SYSTEM, MESSAGES, max_tokens=321)
    seen = server.requests[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.headers["content-type"] == "application/json"
    assert seen.body == {"model": "test-model", "max_tokens": 321,
                         "messages": [{"role": "system", "content": SYSTEM}, *MESSAGES]}
    assert completion == Completion(text="hello", input_tokens=12, output_tokens=3, model="test-model")


def test_openai_without_a_key_sends_no_authorization_header():
    with ScriptedServer([openai_reply("hi")]) as server:
        OpenAIChatClient(server.url, "local").complete(SYSTEM, MESSAGES)
    assert "authorization" not in server.requests[0].headers
    assert server.requests[0].path == "/chat/completions"


def test_openai_structured_mode_sends_the_schema_as_response_format():
    schema = {"type": "object", "properties": {"constant": {"type": "string"}}, "required": ["constant"]}
    with ScriptedServer([openai_reply('{"constant": "DEPTH"}')]) as server:
        OpenAIChatClient(server.url, "local").complete(SYSTEM, MESSAGES, json_schema=schema)
    response_format = server.requests[0].body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["schema"] == schema


def test_openai_reply_cut_at_the_token_limit_is_marked_truncated():
    with ScriptedServer([openai_reply("partial", finish_reason="length")]) as server:
        completion = OpenAIChatClient(server.url, "m").complete(SYSTEM, MESSAGES)
    assert completion.truncated and completion.text == "partial"


def test_openai_null_content_reads_as_empty_text():
    with ScriptedServer([openai_reply(None)]) as server:
        assert OpenAIChatClient(server.url, "m").complete(SYSTEM, MESSAGES).text == ""


def test_openai_reply_without_choices_is_a_bad_response():
    with ScriptedServer([Reply({"object": "chat.completion"})]) as server:
        with pytest.raises(BadResponse, match="choices"):
            OpenAIChatClient(server.url, "m").complete(SYSTEM, MESSAGES)


# ----------------------------------------------------------------------------------
# Messages


def test_anthropic_request_has_the_messages_shape_and_key_headers():
    reply = anthropic_reply("ignored")
    reply.body["content"] = [{"type": "text", "text": "part one, "}, {"type": "tool_use", "id": "x"},
                             {"type": "text", "text": "part two"}]
    reply.body["usage"] = {"input_tokens": 40, "output_tokens": 7, "cache_read_input_tokens": 2}
    with ScriptedServer([reply]) as server:
        client = AnthropicMessagesClient(server.url, "claude-test", api_key="ak-test", timeout=5)
        completion = client.complete(SYSTEM, MESSAGES, max_tokens=99)
    seen = server.requests[0]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == "ak-test"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    assert seen.body == {"model": "claude-test", "max_tokens": 99, "system": SYSTEM, "messages": MESSAGES}
    assert completion.text == "part one, part two"
    assert (completion.input_tokens, completion.output_tokens) == (42, 7)


def test_anthropic_stop_at_max_tokens_is_marked_truncated():
    with ScriptedServer([anthropic_reply("cut", stop_reason="max_tokens")]) as server:
        assert AnthropicMessagesClient(server.url, "m", "k").complete(SYSTEM, MESSAGES).truncated


def test_anthropic_reply_without_content_is_a_bad_response():
    with ScriptedServer([Reply({"type": "message"})]) as server:
        with pytest.raises(BadResponse):
            AnthropicMessagesClient(server.url, "m", "k").complete(SYSTEM, MESSAGES)


# ----------------------------------------------------------------------------------
# Failures map to error classes


def test_401_is_an_auth_error_naming_the_variable_to_set():
    with ScriptedServer([error_reply(401, "Incorrect API key provided")]) as server:
        with pytest.raises(AuthError) as caught:
            OpenAIChatClient(server.url, "m", api_key="wrong").complete(SYSTEM, MESSAGES)
    assert "OPENAI_API_KEY" in str(caught.value) and "Incorrect API key" in str(caught.value)


def test_403_from_anthropic_names_its_variable():
    with ScriptedServer([error_reply(403, "forbidden")]) as server:
        with pytest.raises(AuthError, match="ANTHROPIC_API_KEY"):
            AnthropicMessagesClient(server.url, "m", "k").complete(SYSTEM, MESSAGES)


def test_429_carries_the_retry_after_seconds():
    with ScriptedServer([error_reply(429, "slow down", {"Retry-After": "7"})]) as server:
        with pytest.raises(RateLimited) as caught:
            OpenAIChatClient(server.url, "m").complete(SYSTEM, MESSAGES)
    assert caught.value.retry_after == 7.0


def test_5xx_is_a_server_error_with_its_status_and_retry_after():
    with ScriptedServer([error_reply(503, "overloaded", {"Retry-After": "2"}),
                         error_reply(529, "overloaded")]) as server:
        with pytest.raises(ServerError) as first:
            OpenAIChatClient(server.url, "m").complete(SYSTEM, MESSAGES)
        with pytest.raises(ServerError) as second:
            AnthropicMessagesClient(server.url, "m", "k").complete(SYSTEM, MESSAGES)
    assert (first.value.status, first.value.retry_after) == (503, 2.0)
    assert (second.value.status, second.value.retry_after) == (529, None)


def test_other_4xx_is_rejected_with_the_server_message():
    with ScriptedServer([error_reply(400, "model 'nope' not found")]) as server:
        with pytest.raises(RequestRejected, match="model 'nope' not found"):
            OpenAIChatClient(server.url, "nope").complete(SYSTEM, MESSAGES)


def test_a_reply_slower_than_the_timeout_is_a_timeout():
    with ScriptedServer([Reply(openai_reply("late").body, delay=1.0)]) as server:
        started = time.monotonic()
        with pytest.raises(Timeout):
            OpenAIChatClient(server.url, "m", timeout=0.2).complete(SYSTEM, MESSAGES)
        assert time.monotonic() - started < 0.9


def test_a_dropped_connection_is_a_connection_failure():
    with ScriptedServer([Reply(drop=True)]) as server:
        with pytest.raises(ConnectionFailed):
            OpenAIChatClient(server.url, "m").complete(SYSTEM, MESSAGES)


def test_nothing_listening_is_a_connection_failure():
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionFailed):
        OpenAIChatClient(f"http://127.0.0.1:{port}", "m", timeout=2).complete(SYSTEM, MESSAGES)


def test_a_body_that_is_not_json_is_a_bad_response():
    with ScriptedServer([Reply("<html>gateway</html>")]) as server:
        with pytest.raises(BadResponse, match="not JSON"):
            OpenAIChatClient(server.url, "m").complete(SYSTEM, MESSAGES)


# ----------------------------------------------------------------------------------
# make_client: defaults from the environment

ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "AUTORESEARCH_MODEL")


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_make_client_without_a_model_asks_for_model(clean_env):
    with pytest.raises(ValueError, match="--model"):
        make_client("openai", base_url="http://127.0.0.1:1/v1")


def test_make_client_reads_model_key_and_base_url_from_the_environment(clean_env):
    clean_env.setenv("AUTORESEARCH_MODEL", "env-model")
    clean_env.setenv("OPENAI_API_KEY", "sk-env")
    clean_env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    client = make_client("openai")
    assert (client.model, client.api_key, client.base_url) == ("env-model", "sk-env", "http://127.0.0.1:9/v1")
    clean_env.setenv("ANTHROPIC_API_KEY", "ak-env")
    client = make_client("anthropic", model="claude-x")
    assert isinstance(client, AnthropicMessagesClient)
    assert (client.model, client.api_key, client.base_url) == ("claude-x", "ak-env", "https://api.anthropic.com")


def test_make_client_needs_a_key_for_hosted_apis_but_not_for_a_local_server(clean_env):
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        make_client("openai", model="gpt-4o")
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        make_client("anthropic", model="claude-x")
    local = make_client("openai", model="smollm", base_url="http://127.0.0.1:8080/v1")
    assert local.api_key is None


def test_make_client_rejects_an_unknown_provider(clean_env):
    with pytest.raises(ValueError, match="unknown provider"):
        make_client("gemini", model="m")


def test_a_server_that_refuses_json_schema_gets_a_json_object_schema():
    refusal = error_reply(500, "body.response_format.type: Input should be 'text' or 'json_object'")
    with ScriptedServer([refusal, openai_reply('{"constant": "X", "value": 1, "reason": "r"}'),
                         openai_reply("{}")]) as server:
        client = OpenAIChatClient(server.url, "m")
        schema = {"type": "object"}
        assert client.complete(SYSTEM, MESSAGES, json_schema=schema).text.startswith('{"constant"')
        client.complete(SYSTEM, MESSAGES, json_schema=schema)  # remembered: no refusal this time
    formats = [r.body["response_format"] for r in server.requests]
    assert formats[0]["type"] == "json_schema"
    assert formats[1] == formats[2] == {"type": "json_object", "schema": schema}
