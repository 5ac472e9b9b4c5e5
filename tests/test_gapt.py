import copy
import json
import math
import typing

import pytest

from replication.science.gapt import RULES, GaptConfig, Phase, PhaseController, RelativeRules

M, C = Phase.MEMORIZE, Phase.COMPRESS
ALL_RULES = ["paper", "v1_code", "v1_code_newer", "relative"]


def controller(rules="paper", **kw) -> PhaseController:
    base = dict(patience_memorize=3, patience_compress=3)
    base.update(kw)
    return PhaseController(GaptConfig(rules=rules, **base))


def feed(ctrl: PhaseController, steps) -> list[Phase]:
    return [ctrl.update(ce=ce, mbe=mbe) for ce, mbe in steps]


def assert_trace(ctrl: PhaseController, rows) -> None:
    """rows: (ce, mbe, phase after the update, s_m, s_c); compares the whole trace at once."""
    seen = []
    for ce, mbe, *_ in rows:
        phase = ctrl.update(ce=ce, mbe=mbe)
        seen.append((phase, ctrl.s_m, ctrl.s_c))
    assert seen == [tuple(row[2:]) for row in rows]


def transitions(ctrl: PhaseController) -> list[tuple[int, str]]:
    return [(t.step, t.reason) for t in ctrl.transitions]


def controller_after_plateau(best_ce: float, rules="paper", **kw) -> PhaseController:
    """A controller that has just entered compress and then seen one step at best_ce."""
    ctrl = controller(rules, **kw)
    feed(ctrl, [(4.0, 1.0)] * 4)
    assert ctrl.phase is C
    ctrl.update(ce=best_ce, mbe=1.0)
    return ctrl


# -- paper rules --------------------------------------------------------------------------------
# minimind src/sorl.py GatedPhaseTransition: absolute gains (against +inf: progress); E_min updated every
# update; M_min only in compress; entering compress resets s_c, E_min, M_min; a spike L > (1 + tau) E_min.


def test_paper_trace_by_hand():
    rows = [  # (ce, mbe, phase, s_m, s_c); patiences 3, delta_ce = 0.01, delta_mbe = 0.002, tau = 0.1
        (3.0, 1.0, M, 0, 0),  # 0: progress against E_min = +inf
        (3.0, 1.0, M, 1, 0),  # 1
        (2.995, 1.0, M, 2, 0),  # 2: -0.005 < delta_ce
        (2.995, 1.0, C, 3, 0),  # 3: s_m = 3: compress, E_min and M_min <- +inf
        (3.0, 1.0, C, 3, 0),  # 4: MBE progress against M_min = +inf
        (3.29, 0.99, C, 3, 0),  # 5: 3.29 < 1.1 * 3.0; MBE -0.01
        (3.0, 0.99, C, 3, 1),  # 6
        (3.31, 0.5, M, 0, 1),  # 7: 3.31 > 1.1 * 3.0: spike, MBE not read
        (3.0, 0.5, M, 1, 1),  # 8: E_min = 3.0 kept from compress
        (2.98, 0.5, M, 0, 1),  # 9
        (2.98, 0.5, M, 1, 1),  # 10
        (2.98, 0.5, M, 2, 1),  # 11
        (2.98, 0.5, C, 3, 0),  # 12: compress
        (2.98, 0.5, C, 3, 0),  # 13: MBE progress against +inf
        (2.98, 0.5, C, 3, 1),  # 14
        (2.98, 0.5, C, 3, 2),  # 15
        (2.98, 0.5, M, 0, 3),  # 16: s_c = 3: memorize
    ]
    ctrl = controller()
    assert_trace(ctrl, rows)
    assert transitions(ctrl) == [(3, "ce_plateau"), (7, "ce_spike"), (12, "ce_plateau"), (16, "mbe_plateau")]


def test_rule_set_names():
    assert tuple(RULES) == tuple(ALL_RULES)
    assert GaptConfig(rules="v1_code_newer").rules == "v1_code_newer"


def test_the_config_allows_exactly_the_registrys_rule_sets():
    assert typing.get_args(GaptConfig.model_fields["rules"].annotation) == tuple(RULES)
    for name, rules in RULES.items():
        assert rules.name == name and type(PhaseController(GaptConfig(rules=name)).rules) is rules


@pytest.mark.parametrize(
    "rules, state",
    [
        ("paper", {"s_m", "s_c", "e_min", "m_min"}),
        ("relative", {"s_m", "s_c", "e_min", "m_min"}),
        ("v1_code", {"s_m", "s_c", "e_min", "m_min_by_layer"}),
        ("v1_code_newer", {"s_m", "s_c", "e_min"}),
    ],
)
def test_each_rule_set_keeps_only_its_own_state(rules, state):
    shared = {"config", "phase", "n_updates", "n_nonfinite", "transitions", "ema", "n_smoothed", "last_input"}
    assert set(controller(rules).state_dict()) == shared | state


def test_ce_plateau_switches_to_compress_after_patience():
    ctrl = controller()
    # first update is progress (E_min was +inf); then 3 updates without progress
    assert feed(ctrl, [(3.0, 1.0)] * 4) == [M, M, M, C]
    assert ctrl.transitions[0].as_dict() == {
        "step": 3,
        "from": "memorize",
        "to": "compress",
        "reason": "ce_plateau",
    }


def test_ce_progress_above_threshold_keeps_memorizing():
    ctrl = controller()
    phases = feed(ctrl, [(3.0 - 0.02 * i, 1.0) for i in range(20)])  # 0.02 > delta_ce = 0.01
    assert set(phases) == {M} and ctrl.s_m == 0


def test_progress_below_threshold_counts_as_plateau():
    ctrl = controller()
    phases = feed(ctrl, [(3.0 - 0.005 * i, 1.0) for i in range(4)])  # 0.005 < delta_ce
    assert phases[-1] is C


def test_entering_compress_resets_minima_and_compress_counter():
    ctrl = controller()
    feed(ctrl, [(3.0, 1.0)] * 4)
    assert ctrl.e_min == math.inf and ctrl.m_min == math.inf and ctrl.s_c == 0


def test_mbe_plateau_switches_back_to_memorize():
    ctrl = controller()
    feed(ctrl, [(3.0, 1.0)] * 4)
    # first compress update is MBE progress (M_min = +inf), then 3 updates without progress
    assert feed(ctrl, [(3.0, 0.9)] * 4) == [C, C, C, M]
    assert ctrl.transitions[-1].reason == "mbe_plateau" and ctrl.s_m == 0


def test_mbe_progress_keeps_compressing():
    ctrl = controller()
    feed(ctrl, [(3.0, 1.0)] * 4)
    phases = feed(ctrl, [(3.0, 0.9 - 0.01 * i) for i in range(20)])  # 0.01 > delta_mbe = 0.002
    assert set(phases) == {C}


def test_compression_ends_when_ce_spikes():
    ctrl = controller_after_plateau(best_ce=3.0)
    assert ctrl.update(ce=3.29, mbe=1.0) is C  # 9.7 % above best: within tau = 10 %
    assert ctrl.update(ce=3.4, mbe=1.0) is M  # 13 % above best > tau = 10 %
    assert ctrl.transitions[-1].reason == "ce_spike" and ctrl.s_m == 0


def test_spike_is_measured_against_the_best_ce_of_this_compress_phase():
    ctrl = controller()
    feed(ctrl, [(2.0, 1.0)] + [(2.0, 1.0)] * 3)  # best CE 2.0 before compress
    assert ctrl.phase is C
    # 2.3 is 15 % above the pre-compress best but E_min was reset on entry: no spike
    assert ctrl.update(ce=2.3, mbe=1.0) is C
    assert ctrl.update(ce=2.6, mbe=1.0) is M  # 13 % above 2.3, the best since compress began


def test_spike_uses_strict_inequality():
    ctrl = controller_after_plateau(best_ce=2.0, spike_tol=0.5)
    assert ctrl.update(ce=3.0, mbe=1.0) is C  # exactly (1 + tau) * E_min is not a spike


def test_memorize_phase_does_not_track_mbe_minimum():
    ctrl = controller(patience_memorize=100)
    feed(ctrl, [(3.0 - 0.1 * i, 1.0 - 0.1 * i) for i in range(5)])
    assert ctrl.m_min == math.inf


def test_ce_minimum_carries_over_from_compress_into_memorize():
    ctrl = controller_after_plateau(best_ce=3.0)
    ctrl.update(ce=3.5, mbe=1.0)  # spike
    assert ctrl.phase is M and ctrl.e_min == 3.0
    # 2.995 improves on 3.0 by only 0.005 < delta_ce: counts towards the next plateau
    ctrl.update(ce=2.995, mbe=1.0)
    assert ctrl.s_m == 1


@pytest.mark.parametrize("rules", ["paper", "relative"])
def test_scalar_and_per_layer_mbe_use_the_mean(rules):
    # the rules that watch one number get the mean over the layers
    a, b = controller(rules), controller(rules)
    steps = [(3.0, 1.0)] * 4 + [(3.0, 0.75), (3.0, 0.5), (3.0, 0.5)]
    feed(a, steps)
    for ce, m in steps:
        b.update(ce=ce, mbe=[m - 0.25, m + 0.25])
    a_state, b_state = a.state_dict(), b.state_dict()
    assert a_state.pop("last_input") != b_state.pop("last_input")  # the inputs differ, the state does not
    assert a_state == b_state


@pytest.mark.parametrize("rules", ALL_RULES)
@pytest.mark.parametrize(
    "bad", [(math.nan, 1.0), (math.inf, 1.0), (3.0, math.nan), (3.0, [1.0, math.inf]), (3.0, [])]
)
def test_non_finite_input_changes_nothing_and_is_counted(rules, bad):
    ctrl = controller(rules)
    feed(ctrl, [(3.0, [1.0, 1.0])] * 2)
    before = ctrl.state_dict()
    assert ctrl.update(ce=bad[0], mbe=bad[1]) is ctrl.phase
    after = ctrl.state_dict()
    assert after.pop("n_nonfinite") == before.pop("n_nonfinite") + 1
    assert after.pop("n_updates") == before.pop("n_updates") + 1
    assert after == before


@pytest.mark.parametrize("smoothing", [0.0, 0.5])
@pytest.mark.parametrize("rules", ALL_RULES)
def test_state_round_trip_in_the_middle_of_a_phase(rules, smoothing):
    script = [(3.0 - 0.001 * i, [1.0 + 0.01 * ((i * 7) % 5), 0.8]) for i in range(40)]
    script[17] = (9.0, [1.0, 0.8])  # a spike somewhere in the middle
    reference = controller(rules, smoothing=smoothing)
    phases_ref = feed(reference, script)
    assert reference.n_phase_changes >= 2

    first = controller(rules, smoothing=smoothing)
    feed(first, script[:13])
    assert 0 < first.s_m + first.s_c  # stopped mid-phase, with a counter running
    state = json.loads(json.dumps(first.state_dict()))  # survives serialisation, infinities included
    resumed = controller(rules, smoothing=smoothing)
    resumed.load_state_dict(copy.deepcopy(state))
    phases = phases_ref[:13] + feed(resumed, script[13:])
    assert phases == phases_ref
    assert resumed.state_dict() == reference.state_dict()


def test_smoothing_ignores_a_one_step_spike_but_not_a_lasting_rise():
    raw = controller_after_plateau(best_ce=3.0)
    smooth = controller(smoothing=0.9)
    mbe = iter(1.0 - 0.01 * i for i in range(100))  # MBE keeps improving: only a spike ends compress
    feed(smooth, [(4.0, next(mbe)) for _ in range(4)])
    feed(smooth, [(3.0, next(mbe)) for _ in range(40)])  # compress; smoothed CE settles at 3.0
    assert smooth.phase is C and smooth.last_input[0] == pytest.approx(3.0, abs=1e-2)
    assert raw.update(ce=3.4, mbe=1.0) is M  # raw input: 13 % above best is a spike
    assert smooth.update(ce=3.4, mbe=next(mbe)) is C  # smoothed: about 1.3 % above
    phases = feed(smooth, [(3.6, next(mbe)) for _ in range(30)])  # a lasting rise is a spike when smoothed
    assert M in phases and any(t.reason == "ce_spike" for t in smooth.transitions)


def test_smoothing_is_bias_corrected_and_off_by_default():
    ctrl = controller(smoothing=0.9)
    ctrl.update(ce=2.5, mbe=[0.5, 1.5])
    assert ctrl.last_input == pytest.approx([2.5, 0.5, 1.5])  # no pull towards 0 at the start
    assert ctrl.snapshot()["ce_input"] == pytest.approx(2.5)
    plain = controller()
    plain.update(ce=2.5, mbe=1.0)
    assert "ce_input" not in plain.snapshot() and plain.ema == []
    with pytest.raises(ValueError, match="smoothing"):
        GaptConfig(smoothing=1.0)


def test_a_state_with_the_keys_of_other_rule_sets_loads():
    # a state may hold keys of other rule sets; each rule set loads the ones it keeps
    ctrl = controller("v1_code_newer")
    feed(ctrl, RR_TRACE[:6])
    state = {**ctrl.state_dict(), "m_min": 0.5, "m_min_by_layer": [0.5]}
    resumed = controller("v1_code_newer")
    resumed.load_state_dict(state)
    assert resumed.state_dict() == ctrl.state_dict()


def test_loading_state_of_another_config_fails():
    state = controller(patience_memorize=3).state_dict()
    with pytest.raises(ValueError, match="saved with"):
        controller(patience_memorize=4).load_state_dict(state)


def test_snapshot_reports_infinite_minima_as_none():
    snap = controller().snapshot()
    assert snap == {"phase": "memorize", "s_m": 0, "s_c": 0, "e_min": None, "m_min": None}


def test_unknown_rule_set_and_unknown_keys_are_rejected():
    with pytest.raises(
        ValueError, match="rules\n  Input should be 'paper', 'v1_code', 'v1_code_newer' or 'relative'"
    ):
        GaptConfig(rules="papr")
    with pytest.raises(ValueError, match="rules\n  Input should be 'paper'"):
        GaptConfig.preset("papr")
    with pytest.raises(ValueError, match="patience_memorise\n  Extra inputs are not permitted"):
        GaptConfig(patience_memorise=3)


# -- v1_code rules ------------------------------------------------------------------------------
# mod_gpt src/utils.py RRScheduler (older, two-phase): both counters advance every update in both
# phases; progress measured against a +inf minimum is no progress; spike L >= (1 + tau) E_min before
# the update; memorize -> compress resets s_c and E_min, compress -> memorize resets s_m and the
# per-layer MBE minima.


# A trace with a CE plateau, a CE spike, an MBE plateau, and an MBE rise during memorize (2 layers).
# Patiences 3, delta_ce = 0.01, delta_mbe = 0.002, tau = 0.1.
RR_TRACE = [
    (3.0, [1.0, 2.0]),  # 0: first update, every minimum +inf
    (2.9, [1.0, 1.99]),  # 1: CE -0.1, layer 1 -0.01
    (2.895, [1.0, 1.99]),  # 2: CE -0.005 < delta_ce
    (2.9, [1.1, 2.1]),  # 3
    (2.9, [1.1, 2.1]),  # 4: s_m = 3: compress
    (3.0, [1.0, 1.99]),  # 5: E_min was reset: no CE progress, no spike possible
    (3.29, [0.99, 1.99]),  # 6: 3.29 < 1.1 * 3.0; layer 0 -0.01
    (3.0, [0.99, 1.99]),  # 7
    (3.31, [0.98, 1.99]),  # 8: 3.31 >= 1.1 * 3.0: spike
    (3.0, [0.5, 0.5]),  # 9: MBE minima were cleared: no progress
    (2.98, [0.49, 0.5]),  # 10
    (2.98, [0.49, 0.5]),  # 11
    (2.98, [0.49, 0.5]),  # 12
    (2.98, [0.49, 0.5]),  # 13: s_m = 3: compress
    (2.98, [0.49, 0.5]),  # 14
    (2.98, [0.49, 0.5]),  # 15
    (2.98, [0.49, 0.5]),  # 16
]


def test_v1_trace_by_hand():
    expected = [  # (phase, s_m, s_c) after each update of RR_TRACE
        (M, 1, 1),
        (M, 0, 0),
        (M, 1, 1),
        (M, 2, 2),
        (C, 3, 0),
        (C, 4, 1),
        (C, 5, 0),
        (C, 6, 1),
        (M, 0, 0),
        (M, 1, 1),
        (M, 0, 0),
        (M, 1, 1),
        (M, 2, 2),
        (C, 3, 0),
        (C, 4, 1),
        (C, 5, 2),
        (M, 0, 3),
    ]
    ctrl = controller("v1_code")
    assert_trace(ctrl, [(ce, mbe, *row) for (ce, mbe), row in zip(RR_TRACE, expected)])
    assert transitions(ctrl) == [(4, "ce_plateau"), (8, "ce_spike"), (13, "ce_plateau"), (16, "mbe_plateau")]
    assert ctrl.rules.m_min_by_layer == [math.inf, math.inf] and ctrl.m_min == math.inf and ctrl.e_min == 2.98


def test_v1_first_update_after_a_reset_is_no_progress():
    ctrl = controller("v1_code", patience_memorize=100)
    ctrl.update(ce=3.0, mbe=[1.0])  # every minimum +inf: neither counter restarts
    assert (ctrl.s_m, ctrl.s_c) == (1, 1)
    ctrl.update(ce=2.0, mbe=[0.5])  # progress on both against finite minima
    assert (ctrl.s_m, ctrl.s_c) == (0, 0)


def test_v1_entering_compress_restarts_its_counter():
    # MBE rises through memorize, so s_c = 4 > p_c when the CE plateau ends memorize; compress
    # restarts s_c at 0 and, with MBE flat above its minimum, lasts exactly p_c = 3 updates.
    ctrl = controller("v1_code", patience_memorize=4)
    assert feed(ctrl, [(4.0, [1.0 + 0.1 * i]) for i in range(4)]) == [M, M, M, C]
    assert (ctrl.s_m, ctrl.s_c) == (4, 0)  # s_m is not reset on entering compress
    assert feed(ctrl, [(4.0, [1.3])] * 3) == [C, C, M]
    assert ctrl.transitions[-1].step == 6 and ctrl.transitions[-1].reason == "mbe_plateau"
    assert ctrl.s_m == 0


def test_v1_progress_of_any_single_layer_resets_the_compress_counter():
    ctrl = controller("v1_code", patience_memorize=100)
    feed(ctrl, [(3.0, [1.0, 1.0])] * 3)
    assert ctrl.s_c == 3
    ctrl.update(ce=3.0, mbe=[1.5, 0.99])  # layer 0 worse, layer 1 better by 0.01 > delta_mbe
    assert ctrl.s_c == 0
    ctrl.update(ce=3.0, mbe=[1.0, 0.989])  # layer 1 better by only 0.001: no progress
    assert ctrl.s_c == 1


def test_v1_spike_checked_before_update_with_greater_or_equal():
    ctrl = controller("v1_code", spike_tol=0.5)
    assert feed(ctrl, [(4.0, [1.0])] * 3) == [M, M, C]
    assert ctrl.e_min == math.inf
    assert ctrl.update(ce=2.0, mbe=[0.5]) is C  # E_min was reset: no spike possible
    assert ctrl.update(ce=3.0, mbe=[0.4]) is M  # exactly 1.5 * E_min: a spike under v1_code
    assert ctrl.transitions[-1].reason == "ce_spike"


def test_v1_a_new_minimum_is_no_spike_even_at_tau_zero():
    ctrl = controller("v1_code", spike_tol=0.0)
    assert feed(ctrl, [(4.0, [1.0])] * 3) == [M, M, C]
    assert feed(ctrl, [(3.9, [1.0]), (3.8, [1.0])]) == [C, C]  # each below E_min before its update
    assert ctrl.update(ce=3.8, mbe=[1.0]) is M  # L >= (1 + 0) E_min
    assert ctrl.transitions[-1].reason == "ce_spike"


# -- v1_code_newer rules ------------------------------------------------------------------------
# mod_gpt src/utils.py RRScheduler (newer, default flags): MBE progress is never detected and the MBE
# minima are never set, so s_c grows every update and compress lasts exactly p_c updates unless CE spikes.


def test_v1_newer_trace_by_hand():
    expected = [  # (phase, s_m, s_c) after each update of RR_TRACE
        (M, 1, 1),
        (M, 0, 2),
        (M, 1, 3),
        (M, 2, 4),
        (C, 3, 0),
        (C, 4, 1),
        (C, 5, 2),
        (M, 0, 3),
        (M, 1, 4),
        (M, 2, 5),
        (M, 0, 6),
        (M, 1, 7),
        (M, 2, 8),
        (C, 3, 0),
        (C, 4, 1),
        (C, 5, 2),
        (M, 0, 3),
    ]
    ctrl = controller("v1_code_newer")
    assert_trace(ctrl, [(ce, mbe, *row) for (ce, mbe), row in zip(RR_TRACE, expected)])
    assert transitions(ctrl) == [
        (4, "ce_plateau"),
        (7, "mbe_plateau"),
        (13, "ce_plateau"),
        (16, "mbe_plateau"),
    ]
    assert ctrl.m_min == math.inf and "m_min_by_layer" not in ctrl.state_dict()


@pytest.mark.parametrize("p_c", [1, 2, 5])
def test_v1_newer_compress_lasts_exactly_p_c_updates_however_mbe_falls(p_c):
    ctrl = controller("v1_code_newer", patience_compress=p_c)
    assert feed(ctrl, [(3.0, [1.0])] * 3) == [M, M, C]
    falling = [(3.0, [0.9 - 0.1 * i]) for i in range(p_c)]  # MBE improves by 0.1 every update
    assert feed(ctrl, falling) == [C] * (p_c - 1) + [M]
    assert transitions(ctrl) == [(2, "ce_plateau"), (2 + p_c, "mbe_plateau")]


def test_v1_newer_compress_ends_early_on_a_ce_spike():
    ctrl = controller("v1_code_newer", patience_compress=10)
    feed(ctrl, [(3.0, [1.0])] * 3)
    assert feed(ctrl, [(3.0, [0.9]), (3.2, [0.8]), (3.31, [0.7])]) == [C, C, M]
    assert transitions(ctrl) == [(2, "ce_plateau"), (5, "ce_spike")]


# -- relative rules -----------------------------------------------------------------------------
# mod_gpt src/gapt.py GatedPhaseTransition: relative gains, 0 against a +inf or ~0 minimum; both minima
# updated on every call in both phases, never reset; the counter of the phase being left is reset.


def test_relative_trace_by_hand():
    rows = [  # (ce, mbe, phase, s_m, s_c); patiences 3, relative_tol = 0.01, tau = 0.1
        (100.0, 1.0, M, 1, 0),  # 0: gains against +inf are 0: no progress
        (98.0, 0.5, M, 0, 0),  # 1: CE -2 %; M_min <- 0.5 although memorizing
        (97.5, 0.6, M, 1, 0),  # 2: CE -0.51 %
        (97.5, 0.6, M, 2, 0),  # 3
        (97.5, 0.6, C, 0, 0),  # 4: s_m = 3: compress, s_m <- 0; E_min, M_min kept
        (97.5, 0.45, C, 0, 0),  # 5: MBE 10 % below M_min = 0.5, set while memorizing: progress
        (107.0, 0.45, C, 0, 1),  # 6: CE +9.7 % < tau; no MBE gain
        (108.0, 0.6, M, 0, 0),  # 7: CE +10.8 % > tau: spike, s_c <- 0
        (97.0, 0.6, M, 1, 0),  # 8: CE -0.51 % against E_min = 97.5 kept through compress
        (96.0, 0.6, M, 0, 0),  # 9: CE -1.03 %
        (96.0, 0.6, M, 1, 0),  # 10
        (96.0, 0.6, M, 2, 0),  # 11
        (96.0, 0.6, C, 0, 0),  # 12: compress; M_min = 0.45 is kept
        (96.0, 0.44, C, 0, 0),  # 13: MBE 2.2 % below the kept M_min: progress
        (96.0, 0.44, C, 0, 1),  # 14
        (96.0, 0.44, C, 0, 2),  # 15
        (96.0, 0.44, M, 0, 0),  # 16: s_c = 3: memorize, s_c <- 0
    ]
    ctrl = controller("relative")
    assert_trace(ctrl, rows)
    assert transitions(ctrl) == [(4, "ce_plateau"), (7, "ce_spike"), (12, "ce_plateau"), (16, "mbe_plateau")]
    assert (ctrl.e_min, ctrl.m_min) == (96.0, 0.44)


def test_relative_preset_uses_the_later_patiences():
    cfg = GaptConfig.preset("relative")
    assert (cfg.patience_memorize, cfg.patience_compress, cfg.relative_tol) == (125, 75, 0.01)
    assert GaptConfig.preset("relative", patience_compress=9).patience_compress == 9


def test_relative_progress_is_a_fraction_of_the_minimum():
    ctrl = controller("relative")
    ctrl.update(ce=100.0, mbe=1.0)  # first update: no progress
    assert ctrl.s_m == 1
    ctrl.update(ce=99.5, mbe=1.0)  # 0.5 % better: not progress, although 0.5 nats > delta_ce
    assert ctrl.s_m == 2
    ctrl.update(ce=98.0, mbe=1.0)  # 1.5 % better than 99.5
    assert ctrl.s_m == 0


def test_relative_gain_denominator_is_at_least_1e_6():
    ctrl = controller("relative", patience_memorize=100)
    ctrl.update(ce=5e-7, mbe=1.0)
    ctrl.update(ce=4.92e-7, mbe=1.0)  # 1.6 % of 5e-7, but 0.8 % of the 1e-6 floor: no progress
    assert ctrl.s_m == 2


def test_relative_minimum_near_zero_gives_no_gain():
    ctrl = controller("relative")
    assert feed(ctrl, [(0.0, 1.0)] * 3) == [M, M, C]  # E_min = 0: every CE gain is 0
    assert ctrl.update(ce=5.0, mbe=1.0) is C  # no spike either


def test_relative_spike_is_ten_percent_above_the_running_minimum():
    ctrl = controller("relative")
    assert feed(ctrl, [(3.0, 1.0)] * 3) == [M, M, C]
    assert ctrl.update(ce=3.2, mbe=1.0) is C
    assert ctrl.update(ce=3.31, mbe=1.0) is M
    assert ctrl.transitions[-1].reason == "ce_spike"


def test_relative_spike_uses_strict_inequality():
    ctrl = controller("relative")
    assert feed(ctrl, [(10.0, 1.0)] * 3) == [M, M, C]
    assert ctrl.update(ce=11.0, mbe=1.0) is C  # gain exactly -tau: not a spike
    assert ctrl.update(ce=11.01, mbe=1.0) is M


# -- thresholds are strict, as in every version of the author's code -------------------------------


@pytest.mark.parametrize("rules", ["paper", "v1_code", "relative"])
def test_a_ce_drop_exactly_at_the_threshold_is_no_progress(rules):
    # progress is gain > threshold: 1.0 -> 0.5 -> 0.0 drops by exactly 0.5 (absolute, and relative 0.5 of 1.0)
    ctrl = controller(rules, delta_ce=0.5, relative_tol=0.5, patience_memorize=3)
    feed(ctrl, [(1.0, 1.0)])
    ctrl.update(ce=0.5, mbe=1.0)
    # paper: the first update (against +inf) is progress; v1_code and relative: it is not
    assert ctrl.s_m == (1 if rules == "paper" else 2) and ctrl.phase is M


@pytest.mark.parametrize("rules", ["paper", "v1_code", "relative"])
def test_an_mbe_drop_exactly_at_the_threshold_is_no_progress(rules):
    ctrl = controller(
        rules, delta_ce=0.5, delta_mbe=0.5, relative_tol=0.5, patience_memorize=1, patience_compress=5
    )
    while ctrl.phase is M:
        ctrl.update(ce=1.0, mbe=4.0)
    feed(ctrl, [(1.0, 1.0)])  # compress: MBE 4 -> 1 (or its first value): progress or a first minimum
    s_c = ctrl.s_c
    ctrl.update(ce=1.0, mbe=0.5)  # exactly 0.5 below the minimum 1.0: no progress
    assert ctrl.s_c == s_c + 1


def test_the_relative_gain_cutoff_is_strictly_below_1e_minus_9():
    assert RelativeRules.gain(1e-9, 0.0) == pytest.approx(1e-9 / 1e-6)  # at the cutoff: a gain
    assert RelativeRules.gain(0.99e-9, 0.0) == 0.0


def test_v1_logs_the_mean_of_the_per_layer_mbe_minima():
    ctrl = controller("v1_code", patience_memorize=1, patience_compress=9)
    feed(ctrl, [(1.0, [1.0, 1.0])] * 3)
    assert ctrl.phase is C
    feed(ctrl, [(1.0, [0.2, 3.0]), (1.0, [0.4, 1.0])])  # minima 0.2 and 1.0
    assert ctrl.m_min == pytest.approx(0.6) and ctrl.snapshot()["m_min"] == pytest.approx(0.6)


@pytest.mark.parametrize("rules", ALL_RULES)
def test_the_snapshot_logs_the_smoothed_inputs_and_survives_a_state_round_trip(rules):
    ctrl = controller(rules, smoothing=0.5)
    feed(ctrl, [(2.0, [1.0, 3.0]), (1.0, [2.0, 4.0])])
    # bias-corrected EMA with beta 0.5 over two inputs: (0.25 x0 + 0.5 x1) / 0.75
    snapshot = ctrl.snapshot()
    assert snapshot["ce_input"] == pytest.approx((0.25 * 2.0 + 0.5 * 1.0) / 0.75)
    assert snapshot["mbe_input"] == pytest.approx(
        ((0.25 * 1.0 + 0.5 * 2.0) + (0.25 * 3.0 + 0.5 * 4.0)) / 2 / 0.75
    )
    other = controller(rules, smoothing=0.5)
    other.load_state_dict(json.loads(json.dumps(ctrl.state_dict())))
    assert other.snapshot() == snapshot
