import ast
import math
import random
import re

from autoresearch.agents.base import AgentContext, Proposal, ProposalError
from autoresearch.agents.sweep import (SEARCH_SPACE, SweepAgent, config_key, is_valid,
                                       parse_description, reconstruct_trials)
from autoresearch.constants import read_constants
from autoresearch.records import BASELINE, CONFIRM, DISCARD, KEEP, PENDING, ExperimentRecord

SEQ_LEN = 256
CPU_SOURCE = '''"""A small GPT."""
import torch

# ---------------------------------------------------------------------------
DEPTH = 4                 # transformer layers
ASPECT_RATIO = 32         # model_dim = DEPTH * ASPECT_RATIO, rounded up to HEAD_DIM
HEAD_DIM = 64             # channels per attention head
WINDOW_PATTERN = "SSSL"   # S = half-context sliding window, L = full context
TOTAL_BATCH_SIZE = 2**12  # tokens per optimizer step
DEVICE_BATCH_SIZE = 16    # rows per forward pass (gradient accumulation fills the rest)
EMBEDDING_LR = 0.6
UNEMBEDDING_LR = 0.004
MATRIX_LR = 0.04          # Muon
SCALAR_LR = 0.5
WEIGHT_DECAY = 0.2
ADAM_BETAS = (0.8, 0.95)
WARMUP_RATIO = 0.0
WARMDOWN_RATIO = 0.5
FINAL_LR_FRAC = 0.0
SEED = 42                 # not searched: the sweep leaves it alone


def model_dim():
    return DEPTH * ASPECT_RATIO
'''
START = read_constants(CPU_SOURCE)
DESCRIPTION = re.compile(r"^[A-Z_]+ \S.* -> \S.*$")


def bowl(config: dict) -> float:
    """Smooth stand-in for val_bpb: best at MATRIX_LR 0.12, UNEMBEDDING_LR 0.008."""
    return (1.0 + math.log2(config["MATRIX_LR"] / 0.12) ** 2
            + math.log2(config["UNEMBEDDING_LR"] / 0.008) ** 2)


def simulate(agent, objective, steps, store_constants=True, source=CPU_SOURCE):
    """The research loop in miniature: propose, score, keep only strict improvements.
    Returns (proposals, configurations, best score, start score)."""
    best_source = source
    start = best = objective(read_constants(source))
    history = [ExperimentRecord(id=0, kind=BASELINE, status=KEEP, val_bpb=best,
                                extra={"constants": read_constants(source)} if store_constants else {})]
    proposals, configs = [], []
    for number in range(1, steps + 1):
        proposal = agent.propose(AgentContext(program="", files={"train.py": best_source},
                                              history=list(history)))
        if isinstance(proposal, ProposalError):
            break
        config = read_constants(proposal.files["train.py"])
        value = objective(config)
        status = KEEP if value < best else DISCARD
        if status == KEEP:
            best, best_source = value, proposal.files["train.py"]
        extra = {"constants": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}}
        history.append(ExperimentRecord(id=number, status=status, val_bpb=value,
                                        description=proposal.description,
                                        extra=extra if store_constants else {}))
        proposals.append(proposal)
        configs.append(config)
    return proposals, configs, best, start


def propose(source, history, **kwargs):
    return SweepAgent(**kwargs).propose(AgentContext(program="", files={"train.py": source},
                                                     history=history))


def record(number, description, status, **kwargs):
    return ExperimentRecord(id=number, description=description, status=status, **kwargs)


def test_first_proposal_is_a_shallower_model():
    proposal = propose(CPU_SOURCE, [], seq_len=SEQ_LEN)
    assert proposal.description == "DEPTH 4 -> 2"  # a long first stride: the measured prior
    assert read_constants(proposal.files["train.py"]) == {**START, "DEPTH": 2}


def test_batch_halving_keeps_the_device_batch_fitting():
    history = [record(1, "DEPTH 4 -> 2", DISCARD), record(2, "DEPTH 4 -> 6", DISCARD),
               record(3, "DEPTH 4 -> 3", DISCARD), record(4, "DEPTH 4 -> 5", DISCARD)]
    proposal = propose(CPU_SOURCE, history, seq_len=SEQ_LEN)
    assert proposal.description == "TOTAL_BATCH_SIZE 2**12 -> 2**11, DEVICE_BATCH_SIZE 16 -> 8"
    assert read_constants(proposal.files["train.py"]) == {
        **START, "TOTAL_BATCH_SIZE": 2**11, "DEVICE_BATCH_SIZE": 8}


def test_proposals_only_change_constant_values():
    proposals, configs, _, _ = simulate(SweepAgent(seed=0, seq_len=SEQ_LEN), bowl, 30)
    before_lines = CPU_SOURCE.splitlines()
    for proposal, config in zip(proposals, configs):
        ast.parse(proposal.files["train.py"])
        assert list(proposal.files) == ["train.py"]
        assert DESCRIPTION.match(proposal.description)
        after_lines = proposal.files["train.py"].splitlines()
        assert len(after_lines) == len(before_lines)
        for before, after in zip(before_lines, after_lines):
            if before != after:  # only the value between "NAME = " and the comment differs
                name = before.split(" = ")[0]
                assert after.startswith(name + " = ") and name in config
                assert before.partition("#")[2] == after.partition("#")[2]
        assert config["SEED"] == 42


def test_values_stay_in_range_over_200_proposals():
    rng = random.Random(7)  # a noisy objective: keeps land at random
    _, configs, _, _ = simulate(SweepAgent(seed=3), lambda c: rng.random(), 200)
    assert len(configs) == 200
    for config in configs:
        for knob in SEARCH_SPACE:
            value = knob.read(config)
            assert value in knob.grid or value == knob.read(START), (knob, value)
        assert is_valid(config, SEQ_LEN)  # the agent had to infer the sequence length
        assert config["DEVICE_BATCH_SIZE"] * SEQ_LEN <= config["TOTAL_BATCH_SIZE"]
        assert 0.5 <= min(config["ADAM_BETAS"]) and max(config["ADAM_BETAS"]) <= 0.99


def test_never_repeats_a_configuration():
    rng = random.Random(1)
    noisy_bowl = lambda c: bowl(c) + rng.gauss(0, 0.05)
    proposals, configs, _, _ = simulate(SweepAgent(seed=0, seq_len=SEQ_LEN), noisy_bowl, 100)
    keys = [config_key(c) for c in configs] + [config_key(START)]
    assert len(configs) == 100 and len(set(keys)) == len(keys)
    # mostly one constant, occasionally two (a smaller batch brings the device batch along)
    searched = [len({name for name, _, _ in parse_description(p.description)}
                    - {"DEVICE_BATCH_SIZE"}) or 1 for p in proposals]
    assert set(searched) == {1, 2} and searched.count(1) > 3 * searched.count(2)


def test_never_repeats_when_history_has_only_descriptions():
    rng = random.Random(2)
    noisy_bowl = lambda c: bowl(c) + rng.gauss(0, 0.05)
    _, configs, _, _ = simulate(SweepAgent(seed=1, seq_len=SEQ_LEN), noisy_bowl, 60,
                                store_constants=False)
    keys = [config_key(c) for c in configs] + [config_key(START)]
    assert len(configs) == 60 and len(set(keys)) == len(keys)


def test_improves_on_a_smooth_bowl_within_15_experiments():
    _, configs, best, start = simulate(SweepAgent(seed=0, seq_len=SEQ_LEN), bowl, 15)
    assert best < start - 1.0  # most of the way down: the bowl's floor is start - 1.7


def test_improves_when_the_prior_direction_is_wrong():
    low_lr_bowl = lambda c: 1.0 + math.log2(c["MATRIX_LR"] / 0.015) ** 2
    _, configs, best, start = simulate(SweepAgent(seed=0, seq_len=SEQ_LEN), low_lr_bowl, 15)
    assert best < start


def test_follows_a_kept_direction_with_a_longer_stride():
    history = [record(1, "MATRIX_LR 0.04 -> 0.05", KEEP)]
    assert propose("MATRIX_LR = 0.05\n", history).description == "MATRIX_LR 0.05 -> 0.08"


def test_turns_around_after_a_failure_and_looks_closer_after_two():
    source = "MATRIX_LR = 0.04\n"
    first = propose(source, [])
    assert first.description == "MATRIX_LR 0.04 -> 0.06"
    history = [record(1, first.description, DISCARD)]
    second = propose(source, history)
    assert second.description == "MATRIX_LR 0.04 -> 0.02"
    history.append(record(2, second.description, DISCARD))
    assert propose(source, history).description in ("MATRIX_LR 0.04 -> 0.05", "MATRIX_LR 0.04 -> 0.03")


def test_looks_closer_after_long_strides_failed_both_ways():
    history = [record(1, "MATRIX_LR 0.04 -> 0.08", DISCARD), record(2, "MATRIX_LR 0.04 -> 0.02", DISCARD)]
    assert propose("MATRIX_LR = 0.04\n", history).description == "MATRIX_LR 0.04 -> 0.05"


def test_batch_changes_respect_an_inferred_sequence_length():
    source = "TOTAL_BATCH_SIZE = 2**12\nDEVICE_BATCH_SIZE = 16\n"
    # flat objective: nothing is kept, so every batch change from the start gets proposed
    _, configs, _, _ = simulate(SweepAgent(), lambda c: 1.0, 40, source=source)
    assert len(configs) > 10
    for config in configs:
        assert config["TOTAL_BATCH_SIZE"] % (config["DEVICE_BATCH_SIZE"] * SEQ_LEN) == 0


def test_inferred_sequence_length_uses_every_configuration_that_ran():
    # 2**12 tokens in rows of 16 ran, so rows are at most 256 tokens and 2**14 tokens fit
    # in rows of 32; the current configuration alone would only allow rows of 16
    source = "TOTAL_BATCH_SIZE = 2**14\nDEVICE_BATCH_SIZE = 16\n"
    history = [record(1, "TOTAL_BATCH_SIZE 2**14 -> 2**12", DISCARD),
               record(2, "TOTAL_BATCH_SIZE 2**14 -> 2**16", DISCARD)]
    assert propose(source, history).description == "DEVICE_BATCH_SIZE 16 -> 32"


def test_prefers_constants_explored_less():
    history = [record(1, "TOTAL_BATCH_SIZE 2**12 -> 2**11, DEVICE_BATCH_SIZE 16 -> 8", DISCARD),
               record(2, "MATRIX_LR 0.04 -> 0.06", DISCARD)]
    proposal = propose(CPU_SOURCE, history, seq_len=SEQ_LEN)
    assert proposal.description.split(" ")[0] not in ("TOTAL_BATCH_SIZE", "MATRIX_LR")


def test_exhausted_space_returns_an_error():
    source = 'WINDOW_PATTERN = "SSSL"  # the only knob\n'
    proposals, _, _, _ = simulate(SweepAgent(), lambda c: 1.0, 10, source=source)
    assert sorted(p.description for p in proposals) == [
        'WINDOW_PATTERN "SSSL" -> "L"', 'WINDOW_PATTERN "SSSL" -> "SL"',
        'WINDOW_PATTERN "SSSL" -> "SSL"']
    history = [record(i, p.description, DISCARD) for i, p in enumerate(proposals)]
    error = propose(source, history)
    assert isinstance(error, ProposalError) and "exhausted" in error.reason


def test_no_known_constants_or_no_file_returns_an_error():
    assert isinstance(propose("LEARNING_RATE_OF_MY_OWN = 1\n", []), ProposalError)
    missing = SweepAgent().propose(AgentContext(program="", files={"other.py": CPU_SOURCE}))
    assert isinstance(missing, ProposalError) and "train.py" in missing.reason


def test_same_seed_same_proposals():
    runs = [simulate(SweepAgent(seed=5, seq_len=SEQ_LEN), bowl, 25)[0] for _ in range(2)]
    assert [p.description for p in runs[0]] == [p.description for p in runs[1]]


def test_parse_description_handles_tuples_and_refuses_prose():
    assert parse_description("ADAM_BETAS (0.8, 0.95) -> (0.85, 0.95), TOTAL_BATCH_SIZE 2**12 -> 2**11") == [
        ("ADAM_BETAS", (0.8, 0.95), (0.85, 0.95)), ("TOTAL_BATCH_SIZE", 4096, 2048)]
    assert parse_description('WINDOW_PATTERN "SSSL" -> "L"') == [("WINDOW_PATTERN", "SSSL", "L")]
    assert parse_description("use a wider MLP") is None
    assert parse_description("MATRIX_LR 0.04 -> 0.05 and more") is None


def test_history_rebuilt_from_descriptions():
    current = {**START, "MATRIX_LR": 0.06}
    history = [ExperimentRecord(id=0, kind=BASELINE, status=KEEP),
               record(1, "MATRIX_LR 0.04 -> 0.06", PENDING),
               ExperimentRecord(id=2, kind=CONFIRM, status=KEEP, repeat_of=1,
                                description="MATRIX_LR 0.04 -> 0.06"),
               record(3, "DEPTH 4 -> 3", DISCARD)]
    trials = reconstruct_trials(history, current)
    assert trials[0].config["MATRIX_LR"] == 0.04
    assert trials[2].config == current and trials[2].parent == START
    assert trials[3].config == {**current, "DEPTH": 3} and trials[3].parent == current


def test_validity_rules_between_constants():
    assert is_valid(START, SEQ_LEN)
    assert not is_valid({**START, "DEVICE_BATCH_SIZE": 32}, SEQ_LEN)  # 32 rows > 2**12 tokens
    assert not is_valid({**START, "TOTAL_BATCH_SIZE": 3 * 2**11}, SEQ_LEN)  # not whole batches
    assert not is_valid({**START, "DEPTH": 1}, SEQ_LEN)  # 32 channels < one 64-wide head
    assert not is_valid({**START, "WARMUP_RATIO": 0.3, "WARMDOWN_RATIO": 0.8}, SEQ_LEN)
    assert is_valid({"MATRIX_LR": 0.1}, None)
