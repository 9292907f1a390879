"""Refuse exported programs that do anything but pure ATen computation.

The sealed evaluator runs a program written by an untrusted training process. The
program's graph may only compute: no state kept between calls (which would let it
tell the causality probe from scoring calls), no random numbers, no reads of
uninitialised memory, no I/O or other side effects. The rules are by class of
operation, judged from each op's schema and tags, not a list of known attacks.
"""
from __future__ import annotations

import operator

import torch
from torch.export.graph_signature import InputKind, OutputKind

from autoresearch.harness.export import SubmissionError


class UnsafeProgram(SubmissionError):
    """The exported program holds something other than pure ATen computation."""


# The only higher-order ops allowed: the wrappers SealedForward's autocast (and a
# no_grad inside forward) trace to. Their subgraphs are checked like the main graph.
WRAPPERS = {torch.ops.higher_order.wrap_with_autocast,
            torch.ops.higher_order.wrap_with_set_grad_enabled}

# Random ops that are deterministic at these literal argument values (dropout in eval
# mode, attention without dropout): schema name -> {argument: value that turns it off}.
RANDOMNESS_OFF = {
    **{f"aten::{name}": {"train": False, "p": 0.0}
       for name in ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
                    "native_dropout")},
    **{f"aten::{name}": {"dropout_p": 0.0}
       for name in ("scaled_dot_product_attention", "_scaled_dot_product_attention_math",
                    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
                    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                    "_flash_attention_forward", "_efficient_attention_forward")},
}

# String arguments known to be plain options of pure ops; any other string (a file
# name, a message to print) is refused.
STRING_OPTIONS = {
    ("aten::gelu", "approximate"), ("aten::div", "rounding_mode"), ("aten::divide", "rounding_mode"),
    ("aten::einsum", "equation"), ("aten::searchsorted", "side"), ("aten::pad", "mode"),
    ("aten::conv1d", "padding"), ("aten::conv2d", "padding"), ("aten::conv3d", "padding"),
    ("aten::scatter_reduce", "reduce"), ("aten::index_reduce", "reduce"),
    ("aten::_assert_scalar", "assert_msg"), ("aten::_assert_async", "assert_msg"),
}

# Ops without a result act only through side effects; these just raise on bad input.
CHECKS = {"aten::_assert_async", "aten::_assert_scalar", "aten::_assert_tensor_metadata",
          "aten::sym_constrain_range", "aten::sym_constrain_range_for_size"}

PLAIN_INPUTS = {InputKind.USER_INPUT, InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR}


def check_program(ep: torch.export.ExportedProgram) -> None:
    """Raise UnsafeProgram unless `ep` is pure ATen computation without state."""
    _check_signature(ep.graph_signature)
    _check_graph(ep.graph_module, "graph")


def _check_signature(signature) -> None:
    # Export turns in-place updates of buffers and inputs into these: state across calls.
    if signature.buffers_to_mutate:
        raise UnsafeProgram(f"the program updates buffer(s) {sorted(signature.buffers_to_mutate.values())} "
                            "in forward: a program may not keep state between calls")
    if signature.user_inputs_to_mutate:
        raise UnsafeProgram("the program writes into its input: a program may not change what it is fed")
    for spec in signature.input_specs:
        if spec.kind == InputKind.TOKEN:  # export threads these through ops with effects
            raise UnsafeProgram(f"input {spec.arg.name} is an effect token: the program has side effects")
        if spec.kind not in PLAIN_INPUTS:
            raise UnsafeProgram(f"input {spec.arg.name} is a {spec.kind.name}: only tensors may go in")
    for spec in signature.output_specs:
        if spec.kind != OutputKind.USER_OUTPUT:
            raise UnsafeProgram(f"output {spec.arg.name} is a {spec.kind.name}: only the logits may come out")


def _check_graph(gm: torch.fx.GraphModule, where: str) -> None:
    for node in gm.graph.nodes:
        _check_name(node, where)
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "get_attr":
            _check_attribute(gm, node, where)
        elif node.op == "call_function":
            _check_call(node, where)
        else:  # call_module, call_method: never produced by export, so never trusted
            raise UnsafeProgram(f"{where}: node {node.name} is a {node.op} of {node.target!r}; "
                                "only calls of ATen operators are allowed")


def _check_name(node, where: str) -> None:
    # module() turns the graph into Python source: names must be plain identifiers.
    parts = [node.name] + (str(node.target).split(".") if node.op == "get_attr" else [])
    if not all(part.isidentifier() for part in parts):
        raise UnsafeProgram(f"{where}: node {node.name!r} (target {node.target!r}) is not named "
                            "by plain identifiers")


def _check_attribute(gm, node, where: str) -> None:
    value = gm
    for part in node.target.split("."):
        value = getattr(value, part, None)
    if isinstance(value, torch.fx.GraphModule):
        _check_graph(value, f"{where}.{node.target}")
    elif not isinstance(value, torch.Tensor):
        raise UnsafeProgram(f"{where}: node {node.name} reads attribute {node.target} of type "
                            f"{type(value).__name__}; only tensors and subgraphs are allowed")


def _check_call(node, where: str) -> None:
    target = node.target
    if target is operator.getitem:
        return
    if target in WRAPPERS:
        return  # its subgraph is a get_attr node of this graph, checked there
    if not isinstance(target, torch._ops.OpOverload) or target.namespace != "aten":
        raise UnsafeProgram(f"{where}: node {node.name} calls {_describe(target)}; only ATen "
                            "operators (and the autocast/grad-mode wrappers) are allowed")
    _check_op(node, target, where)


def _check_op(node, op: torch._ops.OpOverload, where: str) -> None:
    schema = op._schema
    name = schema.name

    def refuse(why: str):
        raise UnsafeProgram(f"{where}: node {node.name} calls {op}, which {why}")

    written = [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    if written:
        refuse(f"writes into its argument(s) {written}: a program may not keep state or change its input")
    if not schema.returns and name not in CHECKS:
        refuse("returns nothing, so it can act only through side effects")
    if "empty" in name.split("::")[-1]:
        refuse("allocates uninitialised memory, which may still hold values of earlier calls")
    bound = _bound_arguments(node, schema)
    if torch.Tag.nondeterministic_seeded in op.tags and not _randomness_off(name, bound):
        refuse("draws random numbers: scores must not depend on chance")
    for arg in schema.arguments:
        if _holds_string(arg.type) and (name, arg.name) not in STRING_OPTIONS:
            refuse(f"takes a string argument {arg.name!r} ({bound.get(arg.name)!r}); strings may name "
                   "files or other resources outside the program")


def _bound_arguments(node, schema) -> dict:
    """The call's arguments by schema name, defaults filled in."""
    bound = {}
    positional = [a for a in schema.arguments if not a.kwarg_only]
    for arg, value in zip(positional, node.args):
        bound[arg.name] = value
    bound.update(node.kwargs)
    for arg in schema.arguments:
        if arg.name not in bound and arg.has_default_value():
            bound[arg.name] = arg.default_value
    return bound


def _randomness_off(name: str, bound: dict) -> bool:
    for arg, off in RANDOMNESS_OFF.get(name, {}).items():
        value = bound.get(arg)
        # Only a literal counts: a value computed in the graph could be anything.
        if value is off if isinstance(off, bool) else type(value) in (int, float) and value == off:
            return True
    return False


def _holds_string(jit_type) -> bool:
    if isinstance(jit_type, torch._C.StringType):
        return True
    return any(_holds_string(t) for t in jit_type.containedTypes())


def _describe(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"{target} (namespace {target.namespace})"
    module = getattr(target, "__module__", None) or type(target).__module__
    return f"{module}.{getattr(target, '__name__', type(target).__name__)}"
