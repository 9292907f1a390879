import math

import pytest

from autoresearch.config import PolicySettings
from autoresearch.policy import (
    ConfirmPolicy, Decision, GreedyPolicy, NoiseEstimate, is_seed_only_change, make_policy,
    measurements_of,
)
from autoresearch.records import CRASH, DISCARD, INVALID, KEEP, PENDING, ExperimentRecord

BEST = 1.8231
SIGMA = 0.001  # one measurement; with one run each the difference has sqrt(2) x that
THRESHOLD = 2 * SIGMA * math.sqrt(2)  # 0.00283 for k = 2, n = n_best = 1


def confirm(candidate, best=(BEST,), sigma=SIGMA, *, trust="sealed", status=PENDING,
            seed_only=False, **settings):
    return ConfirmPolicy(**settings).decide(list(candidate), list(best), sigma, trust=trust,
                                            status=status, seed_only=seed_only)


# -- noise ---------------------------------------------------------------------------

def test_sigma_is_pooled_within_groups():
    noise = NoiseEstimate()
    for key, values in {"a": [1.0, 1.2, 1.1], "b": [2.0, 2.4], "c": [5.0]}.items():
        for value in values:
            noise.add(key, value)
    # squared deviations 0.02 + 0.08 + 0, over 6 values - 3 groups
    assert noise.sigma() == pytest.approx(math.sqrt(0.10 / 3))
    assert noise.count == 6


def test_sigma_needs_two_values_of_one_group():
    noise = NoiseEstimate()
    noise.add("a", 1.0)
    noise.add("b", 2.0)
    assert noise.sigma() is None
    noise.add("b", 2.2)
    assert noise.sigma() == pytest.approx(math.sqrt(0.02))


def test_noise_from_records_groups_by_commit_and_skips_unusable_results():
    records = [
        ExperimentRecord(id=1, commit="aaa", status=KEEP, val_bpb=1.0),
        ExperimentRecord(id=2, commit="aaa", status=DISCARD, val_bpb=1.2),
        ExperimentRecord(id=3, commit="bbb", status=PENDING, val_bpb=3.0),
        ExperimentRecord(id=4, commit="bbb", status=PENDING, val_bpb=3.2),
        ExperimentRecord(id=5, commit="bbb", status=INVALID, val_bpb=9.0),
        ExperimentRecord(id=6, commit="bbb", status=CRASH, val_bpb=None),
        ExperimentRecord(id=7, commit="bbb", status=DISCARD, val_bpb=float("nan")),
    ]
    noise = NoiseEstimate.from_records(records)
    assert noise.count == 4
    assert noise.sigma() == pytest.approx(math.sqrt((0.02 + 0.02) / 2))
    assert measurements_of(records, "bbb") == [3.0, 3.2]


# -- confirm policy -----------------------------------------------------------------

def test_gain_well_above_k_sigma_is_kept():
    decision = confirm([BEST - 0.0041], sigma=0.0009 / math.sqrt(2))
    assert decision == Decision(KEEP, "-0.0041 > 2 sigma (0.0009)")


def test_gain_just_under_k_sigma_is_rerun():
    decision = confirm([BEST - 0.0003], sigma=0.0009 / math.sqrt(2))
    assert decision == Decision("rerun", "-0.0003 < 2 sigma (0.0009): rerun 2/3")
    assert confirm([BEST - (THRESHOLD - 1e-5)]).action == "rerun"


def test_worse_result_is_discarded():
    assert confirm([BEST + 0.0012]) == Decision(DISCARD, "+0.0012: not better than best 1.8231")


def test_rerun_then_keep_on_the_mean():
    # each run alone is under 2.83e-3, but two runs halve the candidate's variance
    first = confirm([BEST - 0.0027])
    assert first.action == "rerun"
    second = confirm([BEST - 0.0027, BEST - 0.0030])  # threshold now 2 * 0.001 * sqrt(1.5)
    assert second.action == KEEP


def test_rerun_then_discard_when_the_gain_was_luck():
    values = [BEST - 0.0027]
    assert confirm(values).action == "rerun"
    values.append(BEST - 0.0001)
    assert confirm(values).reason.endswith("rerun 3/3")
    values.append(BEST + 0.0002)
    decision = confirm(values)
    assert decision.action == DISCARD
    assert decision.reason.endswith("after 3 runs")


def test_more_best_measurements_lower_the_bar():
    candidate = [BEST - 0.0025]  # under 2 * 0.001 * sqrt(2), over 2 * 0.001 * sqrt(1 + 1/8)
    assert confirm(candidate).action == "rerun"
    assert confirm(candidate, best=[BEST] * 8).action == KEEP


def test_seed_only_change_is_never_kept():
    assert confirm([BEST - 0.05], seed_only=True) == Decision(DISCARD, "seed-only change")


def test_in_process_result_is_refused_when_sealed_is_required():
    decision = confirm([BEST - 0.05], trust="in-process")
    assert decision == Decision(DISCARD, "trust in-process below required sealed")
    assert confirm([BEST - 0.05], trust="in-process", min_trust="in-process").action == KEEP


@pytest.mark.parametrize("status, reason", [
    ("invalid", "result refused: invalid"),
    ("over_budget", "result refused: over_budget"),
    ("crash", "no result: crash"),
    ("timeout", "no result: timeout"),
])
def test_refused_or_missing_results_are_discarded(status, reason):
    assert confirm([BEST - 0.05], status=status) == Decision(DISCARD, reason)


def test_first_result_is_kept():
    assert confirm([BEST], best=[]).action == KEEP


def test_without_noise_estimate_a_gain_is_rerun_then_judged_on_the_floor():
    assert confirm([BEST - 0.01], sigma=None).action == "rerun"
    three = [BEST - 0.01, BEST - 0.008, BEST - 0.009]
    assert confirm(three, sigma=None).action == KEEP
    assert confirm(three, sigma=None, min_sigma=0.01).action == DISCARD


def test_min_sigma_floors_a_small_estimate():
    assert confirm([BEST - 0.004], sigma=1e-5).action == KEEP
    assert confirm([BEST - 0.004], sigma=1e-5, min_sigma=0.002).action == "rerun"


# -- greedy policy ------------------------------------------------------------------

def test_greedy_keeps_any_strict_improvement_even_within_noise():
    greedy = GreedyPolicy()
    keep = greedy.decide([BEST - 1e-6], [BEST], SIGMA, trust="sealed", status=PENDING, seed_only=True)
    assert keep.action == KEEP
    tie = greedy.decide([BEST], [BEST], SIGMA, trust="sealed", status=PENDING, seed_only=False)
    assert tie.action == DISCARD
    assert confirm([BEST - 1e-6]).action != KEEP


def test_make_policy_follows_settings():
    policy = make_policy(PolicySettings(k_sigma=3.0, min_trust="in-process"))
    assert isinstance(policy, ConfirmPolicy)
    assert (policy.k_sigma, policy.min_trust) == (3.0, "in-process")
    assert isinstance(make_policy(PolicySettings(name="greedy")), GreedyPolicy)
    with pytest.raises(ValueError, match="greedy"):
        make_policy(PolicySettings(name="bold"))


# -- seed-only detection ------------------------------------------------------------

TRAIN = """\
import torch
SEED = 42  # reproducible
LR = 0.04
torch.manual_seed(42)
rng = np.random.default_rng(seed=1)
EVAL_SEEDS = (1, 2)
x = torch.randn(3)
"""


@pytest.mark.parametrize("old, new", [
    ("SEED = 42", "SEED = 137"),
    ("torch.manual_seed(42)", "torch.manual_seed(7)"),
    ("rng = np.random.default_rng(seed=1)", "rng = np.random.default_rng(seed=2)"),
    ("SEED = 42  # reproducible", "SEED = 137  # luckier"),
    ("EVAL_SEEDS = (1, 2)", "EVAL_SEEDS = (3, 4)"),
])
def test_seed_changes_are_recognised(old, new):
    assert is_seed_only_change(TRAIN, TRAIN.replace(old, new))


def test_two_seed_lines_changed_together_are_seed_only():
    new = TRAIN.replace("SEED = 42", "SEED = 7").replace("manual_seed(42)", "manual_seed(7)")
    assert is_seed_only_change(TRAIN, new)


@pytest.mark.parametrize("old, new", [
    ("LR = 0.04", "LR = 0.05"),
    ("torch.randn(3)", "torch.randn(4)"),
    ("SEED = 42", "SEED = 42 + 1"),
    ("torch.manual_seed(42)", "torch.manual_seed(42)\ntorch.manual_seed(43)"),
])
def test_other_changes_are_not_seed_only(old, new):
    assert not is_seed_only_change(TRAIN, TRAIN.replace(old, new))


@pytest.mark.parametrize("other_old, other_new", [
    ("LR = 0.04", "LR = 0.05"),
    ("import torch", "import torch\nimport os"),
    ("x = torch.randn(3)\n", ""),
])
def test_seed_change_with_another_change_is_not_seed_only(other_old, other_new):
    new = TRAIN.replace("SEED = 42", "SEED = 137").replace(other_old, other_new)
    assert not is_seed_only_change(TRAIN, new)


def test_no_code_change_is_not_a_seed_change():
    assert not is_seed_only_change(TRAIN, TRAIN.replace("# reproducible", "# fixed"))


def test_replacing_the_seed_name_by_a_number_is_seed_only():
    from autoresearch.policy import is_seed_only_change

    code = "import torch\ntorch.manual_seed(SEED)\nLR = 0.1\n"
    assert is_seed_only_change(code, code.replace("manual_seed(SEED)", "manual_seed(137)"))
    assert not is_seed_only_change(code, code.replace("manual_seed(SEED)", "manual_seed(LR)"))
