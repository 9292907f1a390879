"""The LLM agent end to end over real HTTP: scripted model replies, repair turns, retries, usage."""
from __future__ import annotations

import pytest

from autoresearch.agents import make_agent
from autoresearch.agents.base import AgentContext, Proposal, ProposalError
from autoresearch.agents.llm import LLMAgent, constant_schema
from autoresearch.agents.providers import AnthropicMessagesClient, OpenAIChatClient
from autoresearch.agents.retry import RetryPolicy
from autoresearch.agents.sweep import SweepAgent
from llm_server import Reply, ScriptedServer, anthropic_reply, error_reply, openai_reply

TRAIN = '''\
MATRIX_LR = 0.04  # learning rate of matrix parameters
DEPTH = 4  # transformer layers
WINDOW = "SSSL"  # attention window pattern


def main():
    print(MATRIX_LR * DEPTH)
'''

GOOD_EDIT = """DESCRIPTION: raise the matrix learning rate
train.py
<<<<<<< SEARCH
MATRIX_LR = 0.04  # learning rate of matrix parameters
=======
MATRIX_LR = 0.05  # learning rate of matrix parameters
>>>>>>> REPLACE
"""
EDITED = TRAIN.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05")
MISSING_SEARCH = GOOD_EDIT.replace("MATRIX_LR = 0.04  #", "MATRIX_LR = 0.03  #", 1)
SYNTAX_ERROR = GOOD_EDIT.replace("MATRIX_LR = 0.05  #", "MATRIX_LR = (0.05  #")
FORBIDDEN = GOOD_EDIT.replace("train.py\n", "evaluate.py\n")


def context() -> AgentContext:
    return AgentContext(program="Lower val_bpb.", files={"train.py": TRAIN})


class Sleeps(list):
    """An injected sleep that records its waits instead of waiting."""

    def __call__(self, seconds):
        self.append(seconds)


def openai_agent(server, *, timeout=5, attempts=3, **options):
    sleeps = Sleeps()
    client = OpenAIChatClient(server.url + "/v1", "test-model", api_key="sk-test", timeout=timeout)
    policy = RetryPolicy(max_attempts=attempts, base_delay=0.5, factor=2.0, jitter=0.0)
    return LLMAgent(client, name="openai:test-model", retry_policy=policy, sleep=sleeps, **options), sleeps


def roles(request) -> list[str]:
    return [m["role"] for m in request.body["messages"]]


# ----------------------------------------------------------------------------------
# Good replies


def test_a_good_search_replace_edit_becomes_a_proposal():
    with ScriptedServer([openai_reply(GOOD_EDIT, 120, 30)]) as server:
        agent, _ = openai_agent(server)
        proposal = agent.propose(context())
    assert isinstance(proposal, Proposal)
    assert proposal.description == "raise the matrix learning rate"
    assert proposal.files == {"train.py": EDITED}
    assert proposal.extra == {"input_tokens": 120, "output_tokens": 30, "cost_usd": 0.0, "turns": 1,
                              "model": "test-model"}


def test_the_request_carries_model_messages_max_tokens_and_key():
    with ScriptedServer([openai_reply(GOOD_EDIT)]) as server:
        agent, _ = openai_agent(server, max_tokens=777)
        agent.propose(context())
    seen = server.requests[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.body["model"] == "test-model" and seen.body["max_tokens"] == 777
    assert roles(seen) == ["system", "user"]
    assert "SEARCH" in seen.body["messages"][0]["content"]  # the edit format's instructions
    assert "MATRIX_LR = 0.04" in seen.body["messages"][1]["content"]  # the current file
    assert "response_format" not in seen.body


def test_the_anthropic_agent_speaks_the_messages_format():
    with ScriptedServer([anthropic_reply(GOOD_EDIT, 50, 20)]) as server:
        client = AnthropicMessagesClient(server.url, "claude-test", api_key="ak-test", timeout=5)
        proposal = LLMAgent(client, name="anthropic").propose(context())
    assert proposal.files == {"train.py": EDITED}
    seen = server.requests[0]
    assert seen.path == "/v1/messages" and seen.headers["x-api-key"] == "ak-test"
    assert "SEARCH" in seen.body["system"] and roles(seen) == ["user"]
    assert seen.body["max_tokens"] == 4096


def test_the_whole_file_format_can_be_chosen():
    reply = f"DESCRIPTION: deeper\ntrain.py\n```python\n{TRAIN.replace('DEPTH = 4', 'DEPTH = 6')}```\n"
    with ScriptedServer([openai_reply(reply)]) as server:
        agent, _ = openai_agent(server, edit_format="whole-file")
        proposal = agent.propose(context())
    assert proposal.files["train.py"] == TRAIN.replace("DEPTH = 4", "DEPTH = 6")
    assert "complete" in server.requests[0].body["messages"][0]["content"].lower()


def test_an_unknown_edit_format_fails_at_construction():
    with pytest.raises(ValueError, match="edit format"):
        LLMAgent(OpenAIChatClient("http://127.0.0.1:1", "m"), name="x", edit_format="diff-fenced")


# ----------------------------------------------------------------------------------
# Bad replies: repair turns, then a ProposalError


def test_search_text_not_in_the_file_gets_a_repair_turn_then_succeeds():
    with ScriptedServer([openai_reply(MISSING_SEARCH), openai_reply(GOOD_EDIT)]) as server:
        agent, _ = openai_agent(server)
        proposal = agent.propose(context())
    assert proposal.files == {"train.py": EDITED} and proposal.extra["turns"] == 2
    repair = server.requests[1]
    assert roles(repair) == ["system", "user", "assistant", "user"]
    assert repair.body["messages"][2]["content"] == MISSING_SEARCH  # the conversation is kept
    assert "not in train.py" in repair.body["messages"][3]["content"]
    assert "MATRIX_LR = 0.04" in repair.body["messages"][3]["content"]  # "did you mean" lines


def test_a_syntax_error_gets_a_repair_turn_then_succeeds():
    with ScriptedServer([openai_reply(SYNTAX_ERROR), openai_reply(GOOD_EDIT)]) as server:
        agent, _ = openai_agent(server)
        proposal = agent.propose(context())
    assert isinstance(proposal, Proposal) and proposal.files == {"train.py": EDITED}
    assert "does not parse" in server.requests[1].body["messages"][3]["content"]


def test_an_empty_reply_is_repaired_with_a_non_empty_assistant_turn():
    with ScriptedServer([anthropic_reply(" \n"), anthropic_reply(GOOD_EDIT)]) as server:
        client = AnthropicMessagesClient(server.url, "claude-test", api_key="ak", timeout=5)
        proposal = LLMAgent(client, name="anthropic").propose(context())
    assert isinstance(proposal, Proposal)
    turns = server.requests[1].body["messages"]
    assert turns[1]["role"] == "assistant" and turns[1]["content"].strip()  # Messages refuses empty turns
    assert "empty" in turns[2]["content"].lower()


def test_only_empty_replies_end_in_a_proposal_error_after_max_repairs():
    with ScriptedServer([openai_reply("")] * 3) as server:
        agent, _ = openai_agent(server, max_repairs=2)
        result = agent.propose(context())
    assert isinstance(result, ProposalError) and not result.fatal
    assert "empty" in result.reason.lower()
    assert len(server.requests) == 3 and result.extra["turns"] == 3


def test_a_reply_without_an_edit_is_a_proposal_error():
    with ScriptedServer([openai_reply("I would raise the learning rate.")] * 2) as server:
        agent, _ = openai_agent(server, max_repairs=1)
        result = agent.propose(context())
    assert isinstance(result, ProposalError)
    assert "no edit blocks" in result.reason and len(server.requests) == 2


def test_an_edit_of_a_forbidden_file_is_a_proposal_error():
    with ScriptedServer([openai_reply(FORBIDDEN)] * 2) as server:
        agent, _ = openai_agent(server, max_repairs=1)
        result = agent.propose(context())
    assert isinstance(result, ProposalError)
    assert "evaluate.py" in result.reason and "may not be edited" in result.reason


def test_an_enormous_reply_is_refused_without_a_repair_turn():
    with ScriptedServer([openai_reply(GOOD_EDIT + "#" * 5000, 100, 2000)]) as server:
        agent, _ = openai_agent(server, max_reply_chars=1000)
        result = agent.propose(context())
    assert isinstance(result, ProposalError) and "over the limit" in result.reason
    assert len(server.requests) == 1
    assert result.extra["output_tokens"] == 2000  # spent even though nothing came of it


def test_a_truncated_reply_is_told_it_was_cut_off():
    with ScriptedServer([openai_reply(GOOD_EDIT[:60], finish_reason="length"), openai_reply(GOOD_EDIT)]) as server:
        agent, _ = openai_agent(server)
        assert isinstance(agent.propose(context()), Proposal)
    assert "cut off" in server.requests[1].body["messages"][3]["content"]


# ----------------------------------------------------------------------------------
# Usage


def test_tokens_and_cost_are_summed_over_repair_turns():
    prices = {"test-model": {"input": 2.0, "output": 10.0}}
    with ScriptedServer([openai_reply(MISSING_SEARCH, 1000, 100), openai_reply(GOOD_EDIT, 1500, 200)]) as server:
        agent, _ = openai_agent(server, prices=prices)
        proposal = agent.propose(context())
    assert proposal.extra["input_tokens"] == 2500 and proposal.extra["output_tokens"] == 300
    assert proposal.extra["cost_usd"] == pytest.approx((2500 * 2.0 + 300 * 10.0) / 1e6)
    assert proposal.extra["turns"] == 2


def test_a_proposal_error_carries_the_usage_spent():
    prices = {"test-model": [1.0, 1.0]}
    with ScriptedServer([openai_reply("no edit", 400, 40)] * 2) as server:
        agent, _ = openai_agent(server, prices=prices, max_repairs=1)
        result = agent.propose(context())
    assert isinstance(result, ProposalError)
    assert result.extra == {"input_tokens": 800, "output_tokens": 80, "cost_usd": pytest.approx(880 / 1e6),
                            "turns": 2, "model": "test-model"}


# ----------------------------------------------------------------------------------
# Transport failures: retries, timeouts, credentials


def test_429_with_retry_after_is_waited_out_then_succeeds():
    with ScriptedServer([error_reply(429, "rate limit", {"Retry-After": "3"}), openai_reply(GOOD_EDIT)]) as server:
        agent, sleeps = openai_agent(server)
        proposal = agent.propose(context())
    assert isinstance(proposal, Proposal)
    assert sleeps == [3.0] and len(server.requests) == 2


def test_500_is_retried_after_the_backoff_then_succeeds():
    with ScriptedServer([error_reply(500, "boom"), openai_reply(GOOD_EDIT)]) as server:
        agent, sleeps = openai_agent(server)
        proposal = agent.propose(context())
    assert isinstance(proposal, Proposal) and sleeps == [0.5]
    assert proposal.extra["turns"] == 1  # the failed attempt produced no reply


def test_replies_slower_than_the_timeout_are_retried_then_give_a_proposal_error():
    slow = Reply(openai_reply(GOOD_EDIT).body, delay=0.6)
    with ScriptedServer([slow, slow]) as server:
        agent, sleeps = openai_agent(server, timeout=0.2, attempts=2)
        result = agent.propose(context())
    assert isinstance(result, ProposalError) and not result.fatal
    assert "did not reply in time after 2 attempts" in result.reason
    assert len(server.requests) == 2 and len(sleeps) == 1
    assert result.extra["turns"] == 0


def test_401_is_a_fatal_proposal_error_without_retries():
    with ScriptedServer([error_reply(401, "invalid x-api-key")]) as server:
        agent, sleeps = openai_agent(server)
        result = agent.propose(context())
    assert isinstance(result, ProposalError) and result.fatal
    assert "OPENAI_API_KEY" in result.reason
    assert len(server.requests) == 1 and sleeps == []


def test_a_rejected_request_is_a_non_fatal_proposal_error():
    with ScriptedServer([error_reply(400, "context length exceeded")]) as server:
        agent, sleeps = openai_agent(server)
        result = agent.propose(context())
    assert isinstance(result, ProposalError) and not result.fatal
    assert "context length exceeded" in result.reason and sleeps == []


# ----------------------------------------------------------------------------------
# Structured mode


def structured_agent(server, **options):
    client = OpenAIChatClient(server.url, "small-local", timeout=5)
    return LLMAgent(client, name="local", structured=True, sleep=Sleeps(), **options)


def test_structured_reply_sets_one_constant():
    reply = '{"constant": "MATRIX_LR", "value": 0.05, "reason": "a higher rate may converge faster"}'
    with ScriptedServer([openai_reply(reply)]) as server:
        proposal = structured_agent(server).propose(context())
    assert proposal.files == {"train.py": EDITED}
    assert proposal.description == "a higher rate may converge faster (MATRIX_LR 0.04 -> 0.05)"
    body = server.requests[0].body
    assert body["response_format"]["json_schema"]["schema"] == constant_schema(["MATRIX_LR", "DEPTH", "WINDOW"])
    assert "MATRIX_LR = 0.04" in body["messages"][0]["content"]  # the constants are listed


def test_structured_values_take_the_constants_type():
    replies = ['```json\n{"constant": "DEPTH", "value": 6.0, "reason": "deeper"}\n```',
               '{"constant": "WINDOW", "value": "SSLL", "reason": "longer windows"}']
    with ScriptedServer([openai_reply(r) for r in replies]) as server:
        agent = structured_agent(server)
        deeper, windows = agent.propose(context()), agent.propose(context())
    assert "DEPTH = 6  # transformer layers" in deeper.files["train.py"]
    assert 'WINDOW = "SSLL"' in windows.files["train.py"]


def test_structured_invalid_json_and_unknown_constant_get_repairs_then_an_error():
    replies = ['{"constant": "MATRIX_LR", "value": 0.05', '{"constant": "WARMUP", "value": 10, "reason": "x"}',
               '{"constant": "DEPTH", "value": "deep", "reason": "x"}']
    with ScriptedServer([openai_reply(r) for r in replies]) as server:
        result = structured_agent(server, max_repairs=2).propose(context())
    assert isinstance(result, ProposalError)
    assert "not valid JSON" in server.requests[1].body["messages"][3]["content"]
    assert "'WARMUP' is not one of the constants" in server.requests[2].body["messages"][5]["content"]
    assert "not a constant value" in result.reason and result.extra["turns"] == 3


def test_structured_same_value_is_repaired():
    replies = ['{"constant": "DEPTH", "value": 4, "reason": "x"}', '{"constant": "DEPTH", "value": 5, "reason": "y"}']
    with ScriptedServer([openai_reply(r) for r in replies]) as server:
        proposal = structured_agent(server).propose(context())
    assert proposal.description == "y (DEPTH 4 -> 5)"
    assert "already 4" in server.requests[1].body["messages"][3]["content"]


def test_structured_mode_without_constants_is_a_proposal_error():
    with ScriptedServer([]) as server:
        result = structured_agent(server).propose(AgentContext(program="", files={"model.py": "x = 1\n"}))
    assert isinstance(result, ProposalError) and "train.py" in result.reason
    assert server.requests == []


# ----------------------------------------------------------------------------------
# make_agent


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "AUTORESEARCH_MODEL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_make_agent_builds_llm_agents_and_ignores_other_options(clean_env, tmp_path):
    with ScriptedServer([openai_reply(GOOD_EDIT)]) as server:
        agent = make_agent("openai", model="test-model", base_url=server.url, edit_format="search-replace",
                           structured=False, prices={"test-model": [1, 1]}, seq_len=256,
                           workspace_root=tmp_path, command=None)
        assert isinstance(agent.propose(context()), Proposal)
    assert agent.name == "openai:test-model" and agent.prices == {"test-model": [1, 1]}
    clean_env.setenv("ANTHROPIC_API_KEY", "ak-env")
    clean_env.setenv("AUTORESEARCH_MODEL", "claude-env")
    anthropic = make_agent("anthropic", structured=True, seq_len=256)
    assert isinstance(anthropic.client, AnthropicMessagesClient) and anthropic.structured
    assert anthropic.client.model == "claude-env"


def test_make_agent_without_a_model_says_to_pass_model(clean_env):
    with pytest.raises(ValueError, match="--model"):
        make_agent("openai", base_url="http://127.0.0.1:1/v1", seq_len=256)


def test_make_agent_still_builds_the_sweep():
    assert isinstance(make_agent("sweep", seq_len=256, model="ignored"), SweepAgent)
