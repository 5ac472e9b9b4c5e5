import copy
import json
import math

import pytest

from replication.gapt import GaptConfig, Phase, PhaseController

M, C = Phase.MEMORIZE, Phase.COMPRESS


def controller(rules="paper", **kw) -> PhaseController:
    base = dict(patience_memorize=3, patience_compress=3)
    base.update(kw)
    return PhaseController(GaptConfig(rules=rules, **base))


def feed(ctrl: PhaseController, steps) -> list[Phase]:
    return [ctrl.update(ce=ce, mbe=mbe) for ce, mbe in steps]


def controller_after_plateau(best_ce: float, rules="paper", **kw) -> PhaseController:
    """A controller that has just entered compress and then seen one step at best_ce."""
    ctrl = controller(rules, **kw)
    feed(ctrl, [(4.0, 1.0)] * 4)
    assert ctrl.phase is C
    ctrl.update(ce=best_ce, mbe=1.0)
    return ctrl


# -- paper rules --------------------------------------------------------------------------------


def test_ce_plateau_switches_to_compress_after_patience():
    ctrl = controller()
    # first update is progress (E_min was +inf); then 3 updates without progress
    assert feed(ctrl, [(3.0, 1.0)] * 4) == [M, M, M, C]
    assert ctrl.transitions[0].as_dict() == {"step": 3, "from": "memorize", "to": "compress", "reason": "ce_plateau"}


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


def test_scalar_and_per_layer_mbe_use_the_mean():
    a, b = controller(), controller()
    steps = [(3.0, 1.0)] * 4 + [(3.0, 0.75), (3.0, 0.5), (3.0, 0.5)]
    feed(a, steps)
    for ce, m in steps:
        b.update(ce=ce, mbe=[m - 0.25, m + 0.25])
    a_state, b_state = a.state_dict(), b.state_dict()
    assert a_state.pop("last_input") != b_state.pop("last_input")  # the inputs differ, the state does not
    assert a_state == b_state


@pytest.mark.parametrize("rules", ["paper", "v1_code", "relative"])
@pytest.mark.parametrize("bad", [(math.nan, 1.0), (math.inf, 1.0), (3.0, math.nan), (3.0, [1.0, math.inf]), (3.0, [])])
def test_non_finite_input_changes_nothing_and_is_counted(rules, bad):
    ctrl = controller(rules)
    feed(ctrl, [(3.0, [1.0, 1.0])] * 2)
    before = ctrl.state_dict()
    assert ctrl.update(ce=bad[0], mbe=bad[1]) is ctrl.phase
    after = ctrl.state_dict()
    assert after["n_nonfinite"] == before["n_nonfinite"] + 1
    for key in ("phase", "s_m", "s_c", "e_min", "m_min", "m_min_by_layer", "transitions"):
        assert after[key] == before[key]


@pytest.mark.parametrize("smoothing", [0.0, 0.5])
@pytest.mark.parametrize("rules", ["paper", "v1_code", "relative"])
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


def test_loading_state_of_another_config_fails():
    state = controller(patience_memorize=3).state_dict()
    with pytest.raises(ValueError, match="saved with"):
        controller(patience_memorize=4).load_state_dict(state)


def test_snapshot_reports_infinite_minima_as_none():
    snap = controller().snapshot()
    assert snap == {"phase": "memorize", "s_m": 0, "s_c": 0, "e_min": None, "m_min": None}


def test_unknown_rule_set_is_rejected():
    with pytest.raises(ValueError, match="unknown GAPT rule set 'papr'"):
        GaptConfig(rules="papr")


# -- v1_code rules ------------------------------------------------------------------------------


def test_v1_counters_advance_in_both_phases():
    ctrl = controller("v1_code", patience_memorize=100)
    feed(ctrl, [(3.0 - 0.1 * i, [1.0]) for i in range(5)])  # CE improves, MBE flat
    assert ctrl.phase is M and ctrl.s_m == 0 and ctrl.s_c == 4  # s_c counted during memorize


def test_v1_progress_of_any_single_layer_resets_the_compress_counter():
    ctrl = controller("v1_code", patience_memorize=100)
    feed(ctrl, [(3.0, [1.0, 1.0])] * 3)
    assert ctrl.s_c == 2
    ctrl.update(ce=3.0, mbe=[1.5, 0.99])  # layer 0 worse, layer 1 better by 0.01 > delta_mbe
    assert ctrl.s_c == 0
    ctrl.update(ce=3.0, mbe=[1.0, 0.989])  # layer 1 better by only 0.001: no progress
    assert ctrl.s_c == 1


def test_v1_spike_checked_before_update_with_greater_or_equal():
    ctrl = controller("v1_code", spike_tol=0.5)
    feed(ctrl, [(4.0, [1.0 - 0.01 * i]) for i in range(4)])  # MBE keeps improving: s_c stays 0
    assert ctrl.phase is C and ctrl.e_min == math.inf
    assert ctrl.update(ce=2.0, mbe=[0.5]) is C  # E_min was reset: no spike possible
    assert ctrl.update(ce=3.0, mbe=[0.4]) is M  # exactly 1.5 * E_min: a spike under v1_code
    assert ctrl.transitions[-1].reason == "ce_spike"


def test_v1_resets_ce_minimum_on_compress_and_mbe_minima_on_memorize():
    ctrl = controller("v1_code")
    feed(ctrl, [(4.0, [1.0 - 0.01 * i, 2.0]) for i in range(4)])
    assert ctrl.phase is C and ctrl.e_min == math.inf
    assert ctrl.m_min_by_layer == pytest.approx([0.97, 2.0])
    feed(ctrl, [(4.0, [0.97, 2.0])] * 3)  # no layer improves: plateau after s_c reaches 3
    assert ctrl.phase is M and ctrl.transitions[-1].reason == "mbe_plateau"
    assert ctrl.m_min_by_layer == [math.inf, math.inf]


def test_v1_compress_counter_carries_over_from_memorize():
    # MBE rises through memorize, so s_c is already past patience when compress begins;
    # a compress step that does not improve any layer ends the phase at once.
    ctrl = controller("v1_code")
    feed(ctrl, [(4.0, [1.0 + 0.1 * i]) for i in range(4)])
    assert ctrl.phase is C and ctrl.s_c == 3
    assert ctrl.update(ce=4.0, mbe=[2.0]) is M


# -- relative rules -----------------------------------------------------------------------------


def test_relative_preset_uses_the_later_patiences():
    cfg = GaptConfig.preset("relative")
    assert (cfg.patience_memorize, cfg.patience_compress, cfg.relative_tol) == (125, 75, 0.01)
    assert GaptConfig.preset("relative", patience_compress=9).patience_compress == 9


def test_relative_progress_is_a_fraction_of_the_minimum():
    ctrl = controller("relative")
    ctrl.update(ce=100.0, mbe=1.0)
    ctrl.update(ce=99.5, mbe=1.0)  # 0.5 % better: not progress, although 0.5 nats > delta_ce
    assert ctrl.s_m == 1
    ctrl.update(ce=98.0, mbe=1.0)  # 1.5 % better than 99.5
    assert ctrl.s_m == 0


def test_relative_minima_are_never_reset():
    ctrl = controller("relative")
    feed(ctrl, [(3.0, 1.0)] * 4)
    assert ctrl.phase is C and ctrl.e_min == 3.0  # kept across memorize -> compress
    feed(ctrl, [(3.0, 0.8)] * 4)
    assert ctrl.phase is M and ctrl.m_min == 0.8  # kept across compress -> memorize
    feed(ctrl, [(3.0, 0.9)] * 3)  # back in compress: 0.9 will be no progress against the old 0.8
    assert ctrl.phase is C and ctrl.s_c == 0
    assert feed(ctrl, [(3.0, 0.9)] * 3) == [C, C, M]


def test_relative_spike_is_ten_percent_above_the_running_minimum():
    ctrl = controller("relative")
    feed(ctrl, [(3.0, 1.0)] * 4)
    assert ctrl.update(ce=3.2, mbe=1.0) is C
    assert ctrl.update(ce=3.31, mbe=1.0) is M
    assert ctrl.transitions[-1].reason == "ce_spike"
