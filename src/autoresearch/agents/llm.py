"""An agent that asks an LLM for each proposal, through one of the wire-format clients.

One proposal is a short conversation: the context goes out, the reply is applied with
the edit format against the current files, and when it does not apply (or the result
does not parse) the model is shown what went wrong and asked again, up to
`max_repairs` times. Every failure comes back as a ProposalError, never an exception;
tokens and cost of all turns are recorded either way.

Structured mode is for small local models: the reply is one JSON object naming a
constant of train.py and its new value, which is written like the offline sweep does.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

from autoresearch.agents.base import AgentContext, Proposal, ProposalError
from autoresearch.agents.context import build_messages
from autoresearch.agents.pricing import cost_usd
from autoresearch.agents.providers import AuthError, ProviderError, make_client
from autoresearch.agents.retry import RetryPolicy, call_with_retries
from autoresearch.constants import format_value, parse_value, read_constants, set_constants
from autoresearch.edits import EditResult, get_format, repair_prompt

DESCRIPTION_CHARS = 200  # a description is one line of the results table
EMPTY_TURN = "(empty reply)"  # stands in for a blank assistant turn, which the Messages format refuses


# ----------------------------------------------------------------------------------
# Structured mode: {"constant": NAME, "value": new value, "reason": why}


def constant_schema(names: list[str]) -> dict:
    return {
        "type": "object",
        "properties": {
            "constant": {"type": "string", "enum": list(names)},
            "value": {"anyOf": [{"type": "number"}, {"type": "string"}]},
            "reason": {"type": "string"},
        },
        "required": ["constant", "value", "reason"],
        "additionalProperties": False,
    }


def _json_object(reply: str) -> dict:
    """The JSON object in a reply, tolerating a code fence or a sentence around it."""
    text = reply.strip()
    if not text:
        raise ValueError("the reply was empty")
    try:
        parsed = json.loads(text)
    except ValueError as error:
        start, end = text.find("{"), text.rfind("}")
        if start == -1 or end <= start:
            raise ValueError(f"the reply is not valid JSON ({error})") from None
        try:
            parsed = json.loads(text[start:end + 1])
        except ValueError as inner:
            raise ValueError(f"the reply is not valid JSON ({inner})") from None
    if not isinstance(parsed, dict):
        raise ValueError("the reply is JSON but not an object")
    return parsed


def _coerce(name: str, old, new):
    """The new value in the type the script uses for this constant; ValueError if it cannot be."""
    if isinstance(new, str) and not isinstance(old, str):
        try:
            new = parse_value(new)  # e.g. "2**19" or "(1, 2)"
        except ValueError:
            raise ValueError(f"{new!r} is not a constant value for {name} (now {format_value(old)})") from None
    if isinstance(old, bool) or isinstance(new, bool):
        if type(old) is not type(new):
            raise ValueError(f"{name} is {format_value(old)}; give a value of the same kind")
        return new
    if isinstance(old, int) and isinstance(new, float):
        if not new.is_integer():
            raise ValueError(f"{name} is an integer; {new} is not")
        return int(new)
    if isinstance(old, float) and isinstance(new, int):
        return float(new)
    if isinstance(new, float) and not math.isfinite(new):
        raise ValueError(f"{new} is not a finite number")
    if type(old) is not type(new) and not (isinstance(old, (tuple, list)) and isinstance(new, (tuple, list))):
        raise ValueError(f"{name} is a {type(old).__name__}; {new!r} is a {type(new).__name__}")
    return new


class ConstantChange:
    """An edit format (name, instructions, apply) whose edit is one constant's new value."""

    name = "constant"

    def __init__(self, target: str, constants: dict):
        self.target = target
        self.constants = constants
        self.schema = constant_schema(list(constants))
        listing = "\n".join(f"{name} = {format_value(value)}" for name, value in constants.items())
        self.instructions = (
            f"Propose exactly one change: a new value for one of these constants of {target}:\n"
            f"{listing}\n\n"
            "Reply with only a JSON object and nothing else, matching this schema:\n"
            f"{json.dumps(self.schema)}\n"
            'Example: {"constant": "MATRIX_LR", "value": 0.05, "reason": "a higher rate may converge faster"}'
        )

    def apply(self, reply: str, files: dict, editable) -> EditResult:
        try:
            answer = _json_object(reply)
            name, value = answer.get("constant"), answer.get("value")
            if name not in self.constants:
                known = ", ".join(self.constants)
                raise ValueError(f"{name!r} is not one of the constants: {known}")
            if value is None:
                raise ValueError('the object has no "value"')
            old = self.constants[name]
            new = _coerce(name, old, value)
            if new == old:
                raise ValueError(f"{name} is already {format_value(old)}; choose a different value")
            source = set_constants(files[self.target], {name: new})
        except (ValueError, TypeError) as error:
            return EditResult(files=None, description="", error=str(error))
        reason = " ".join(str(answer.get("reason") or "").split())
        change = f"{name} {format_value(old)} -> {format_value(new)}"
        return EditResult(files={self.target: source},
                          description=f"{reason} ({change})" if reason else change, error=None)

    def repair_prompt(self, result: EditResult) -> str:
        return (f"That reply could not be used: {result.error}\n"
                "Reply again with only the JSON object, changing one of the listed constants.")


# ----------------------------------------------------------------------------------
# Usage over the turns of one proposal


@dataclass
class Usage:
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    turns: int = 0

    def add(self, completion, priced_as: str, prices: dict | None) -> None:
        self.input_tokens += completion.input_tokens
        self.output_tokens += completion.output_tokens
        self.cost_usd += cost_usd(priced_as, completion.input_tokens, completion.output_tokens, prices)
        self.turns += 1
        self.model = completion.model or self.model

    def extra(self) -> dict:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cost_usd": round(self.cost_usd, 6), "turns": self.turns, "model": self.model}


# ----------------------------------------------------------------------------------
# The agent


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= DESCRIPTION_CHARS else line[:DESCRIPTION_CHARS - 3] + "..."


class LLMAgent:
    def __init__(self, client, *, name: str, edit_format: str = "search-replace", max_repairs: int = 2,
                 token_budget: int = 24000, structured: bool = False, prices: dict | None = None,
                 max_reply_chars: int = 200_000, max_tokens: int = 4096, target: str = "train.py",
                 retry_policy: RetryPolicy | None = None, sleep=time.sleep):
        self.client = client
        self.name = name
        self.edit_format = edit_format
        self.max_repairs = max_repairs
        self.token_budget = token_budget
        self.structured = structured
        self.prices = prices
        self.max_reply_chars = max_reply_chars
        self.max_tokens = max_tokens
        self.target = target
        self.retry_policy = retry_policy or RetryPolicy()
        self.sleep = sleep
        if not structured:
            get_format(edit_format)  # an unknown format name fails now, not at the first proposal

    def _format_for(self, context: AgentContext):
        if not self.structured:
            return get_format(self.edit_format)
        if self.target not in context.files:
            raise ValueError(f"structured mode edits {self.target}, which is not among the editable files")
        constants = read_constants(context.files[self.target])
        if not constants:
            raise ValueError(f"structured mode found no UPPER_CASE constants in {self.target}")
        return ConstantChange(self.target, constants)

    def _check(self, fmt, completion, context: AgentContext) -> EditResult:
        """The reply applied to the current files; the format reports empty, unparseable or
        unappliable replies, edits that change nothing and results that do not parse."""
        result = fmt.apply(completion.text, dict(context.files), list(context.files))
        if result.error is None and not result.files:
            result = EditResult(files=None, description=result.description, error="The reply contains no edit.")
        if result.error is not None and completion.truncated:
            result = EditResult(files=None, description=result.description,
                                error=f"{result.error}\n(Your reply was cut off at the token limit: keep it shorter.)")
        return result

    def _repair(self, fmt, result: EditResult) -> str:
        own = getattr(fmt, "repair_prompt", None)
        return own(result) if callable(own) else repair_prompt(result)

    def propose(self, context: AgentContext) -> Proposal | ProposalError:
        usage = Usage(model=self.client.model)
        try:
            fmt = self._format_for(context)
            system, user = build_messages(context, fmt, token_budget=self.token_budget)
        except ValueError as error:
            return ProposalError(str(error), extra=usage.extra())
        schema = fmt.schema if self.structured else None
        messages = [{"role": "user", "content": user}]
        for _ in range(self.max_repairs + 1):
            try:
                completion = call_with_retries(
                    lambda: self.client.complete(system, messages, json_schema=schema, max_tokens=self.max_tokens),
                    self.retry_policy, sleep=self.sleep)
            except ProviderError as error:
                attempts = getattr(error, "attempts", 1)
                tried = f" after {attempts} attempts" if attempts > 1 else ""
                return ProposalError(f"{self.retry_policy.rule(error).message}{tried}: {error}",
                                     extra=usage.extra(), fatal=isinstance(error, AuthError))
            usage.add(completion, self.client.model, self.prices)
            if len(completion.text) > self.max_reply_chars:
                # not sent back for repair: echoing it would cost as much again
                return ProposalError(f"the reply has {len(completion.text):,} characters, over the limit of "
                                     f"{self.max_reply_chars:,}", extra=usage.extra())
            result = self._check(fmt, completion, context)
            if result.error is None:
                description = _one_line(result.description) or f"edit of {', '.join(sorted(result.files))}"
                return Proposal(description=description, files=result.files, extra=usage.extra())
            said = completion.text if completion.text.strip() else EMPTY_TURN
            messages = [*messages, {"role": "assistant", "content": said},
                        {"role": "user", "content": self._repair(fmt, result)}]
        return ProposalError(f"no usable edit in {usage.turns} replies; the last: {result.error}",
                             extra=usage.extra())


def make_llm_agent(provider: str, *, model: str | None = None, base_url: str | None = None,
                   api_key: str | None = None, edit_format: str | None = None, structured: bool = False,
                   prices: dict | None = None, timeout: float = 120, **ignored) -> LLMAgent:
    """The agent for `provider` ("openai" or "anthropic"), with defaults from the environment."""
    client = make_client(provider, model=model, base_url=base_url, api_key=api_key, timeout=timeout)
    return LLMAgent(client, name=f"{provider}:{client.model}", edit_format=edit_format or "search-replace",
                    structured=bool(structured), prices=prices)
