"""graphcheck on real exports: the honest template passes, each refused class is refused."""
import importlib.util
import operator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autoresearch.templates
from autoresearch.harness.export import SealedForward, SubmissionError, trace_program
from autoresearch.harness.graphcheck import UnsafeProgram, check_program

V, B, T = 32, 2, 8
IDX = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))


def traced(model, dtype=None, functional=True):
    sealed = SealedForward(model, dtype).eval()
    if functional:  # as export_model seals it
        return trace_program(sealed, IDX)
    return torch.export.export(sealed, (IDX,))  # the raw training IR: in-place ops stay


def refused(model, match, **kw):
    with pytest.raises(UnsafeProgram, match=match) as info:
        check_program(traced(model, **kw))
    return str(info.value)


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = nn.Embedding(V, 16), nn.Linear(16, V)

    def body(self, h):
        return h

    def forward(self, idx):
        return self.head(self.body(self.emb(idx)))


def test_unsafe_program_is_a_submission_error():
    assert issubclass(UnsafeProgram, SubmissionError)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("functional", [True, False])
def test_the_template_gpt_passes(dtype, functional):
    spec = importlib.util.spec_from_file_location(
        "gpt_template_graphcheck", Path(autoresearch.templates.__file__).parent / "gpt" / "train.py")
    tpl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tpl)
    tpl.DEPTH, tpl.ASPECT_RATIO, tpl.HEAD_DIM = 2, 32, 32
    model = tpl.GPT(tpl.config_from_constants(V, T))
    model.init_weights()
    program = traced(model, dtype, functional)
    check_program(program)
    if dtype and not functional:  # the autocast wrapper and its subgraph were checked
        assert any(n.target is torch.ops.higher_order.wrap_with_autocast for n in program.graph.nodes)


class Honest(Base):
    """Pure code that uses in-place ops on intermediates, gelu's string option, eval dropout."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.1)

    def body(self, h):
        h = h.clone()
        h.mul_(2)
        h[:, 1:] += h[:, :-1]
        with torch.no_grad():
            scale = h.detach().abs().mean()
        return self.drop(F.gelu(h, approximate="tanh")) / (1 + scale)


def test_pure_code_with_in_place_intermediates_passes():
    check_program(traced(Honest()))


class Counter(Base):
    """Keeps a call count in a buffer: the way to tell the probe from scoring."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def body(self, h):
        self.calls += 1
        return h * self.calls


def test_state_kept_in_a_buffer_is_refused():
    message = refused(Counter(), "updates buffer")
    assert "calls" in message and "state between calls" in message
    # in the unfunctionalised form the same update is an op that writes its argument
    assert "writes into its argument" in refused(Counter(), "add_", functional=False)


class WritesInput(Base):
    def forward(self, idx):
        idx.clamp_(0, V - 1)
        return super().forward(idx)


def test_writing_into_the_input_is_refused():
    refused(WritesInput(), "writes into its input")


class Noise(Base):
    def body(self, h):
        return h + torch.rand(h.shape[-1])


class TrainDropout(Base):
    def body(self, h):
        return F.dropout(h, 0.5, training=True)


class AttentionDropout(Base):
    def body(self, h):
        q = h.unsqueeze(1)
        return F.scaled_dot_product_attention(q, q, q, dropout_p=0.1, is_causal=True).squeeze(1)


@pytest.mark.parametrize("model", [Noise, TrainDropout, AttentionDropout])
def test_random_numbers_are_refused(model):
    assert "random numbers" in refused(model(), "draws random")


class Uninitialised(Base):
    def body(self, h):
        return h + torch.empty_like(h)


def test_uninitialised_memory_is_refused():
    refused(Uninitialised(), "uninitialised memory")


class Prints(Base):
    def body(self, h):
        torch.ops.aten._print("side effect")
        return h


def test_side_effects_are_refused():
    refused(Prints(), "side effects")  # export threads an effect token through it
    refused(Prints(), "_print.*returns nothing", functional=False)


def test_from_file_cannot_be_traced():
    class Reads(Base):
        def body(self, h):
            return h + torch.from_file("/dev/zero", size=16)

    with pytest.raises(Exception, match="from_file"):
        traced(Reads())


def _with_node(program, op, target, args=(), kwargs=None, name=None):
    """The honest program with one more node before its output, as a forger could write it."""
    graph = program.graph_module.graph
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output):
        node = graph.create_node(op, target, args, kwargs or {}, name=name)
    if name:
        node.name = name  # create_node sanitises; a forged file need not
    return program


def test_a_file_name_argument_is_refused():
    program = _with_node(traced(Base()), "call_function", torch.ops.aten.from_file.default,
                         ("/etc/passwd",), {"size": 4})
    with pytest.raises(UnsafeProgram, match=r"from_file.*string argument 'filename'.*'/etc/passwd'"):
        check_program(program)


def test_string_options_of_pure_ops_pass_and_others_do_not():
    h = next(n for n in traced(Base()).graph.nodes if n.op == "placeholder")
    ok = _with_node(traced(Base()), "call_function", torch.ops.aten.div.Tensor_mode, (h, h),
                    {"rounding_mode": "floor"})
    check_program(ok)
    program = traced(Base())
    idx = [n for n in program.graph.nodes if n.op == "placeholder"][-1]
    _with_node(program, "call_function", torch.ops.aten._linalg_check_errors.default,
               (idx, "api", False))
    with pytest.raises(UnsafeProgram, match="returns nothing|string"):
        check_program(program)


@pytest.mark.parametrize("target", [print, torch.manual_seed, operator.add])
def test_calls_outside_aten_are_refused(target):
    program = _with_node(traced(Base()), "call_function", target, (1,))
    with pytest.raises(UnsafeProgram, match="only ATen operators"):
        check_program(program)


def test_module_and_method_calls_are_refused():
    program = traced(Base())
    h = next(n for n in program.graph.nodes if n.op == "placeholder")
    _with_node(program, "call_method", "add_", (h, 1))
    with pytest.raises(UnsafeProgram, match="call_method of 'add_'"):
        check_program(program)


def test_names_that_are_not_identifiers_are_refused():
    program = traced(Base())
    h = next(n for n in program.graph.nodes if n.op == "placeholder")
    _with_node(program, "call_function", torch.ops.aten.relu.default, (h,), name="x; import os")
    with pytest.raises(UnsafeProgram, match="plain identifiers"):
        check_program(program)
