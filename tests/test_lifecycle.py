"""The lifecycle table as data: its invariants checked on the table itself, no I/O."""

from __future__ import annotations

import itertools

import pytest

from trioserver.lifecycle import TRANSITIONS, LifecycleError, State, check_move

ALL_PAIRS = list(itertools.product(State, State))
ALLOWED = [(a, b) for a, b in ALL_PAIRS if b in TRANSITIONS[a]]
REFUSED = [(a, b) for a, b in ALL_PAIRS if b not in TRANSITIONS[a]]


def reachable(start: State) -> set[State]:
    """Every state reachable from ``start`` in one or more moves."""
    seen: set[State] = set()
    todo = list(TRANSITIONS[start])
    while todo:
        state = todo.pop()
        if state not in seen:
            seen.add(state)
            todo.extend(TRANSITIONS[state])
    return seen


def test_the_table_has_a_row_for_every_state_and_names_only_states() -> None:
    assert set(TRANSITIONS) == set(State)
    for targets in TRANSITIONS.values():
        assert targets <= set(State)


@pytest.mark.parametrize("state", [s for s in State if s is not State.CLOSED])
def test_every_state_can_reach_closed(state: State) -> None:
    assert State.CLOSED in reachable(state)


@pytest.mark.parametrize("state", [s for s in State if s not in (State.CLOSING, State.CLOSED)])
def test_every_state_before_closing_can_close_at_once(state: State) -> None:
    """A kick, a reset or a deadline is one move from anywhere that is still open."""
    assert State.CLOSING in TRANSITIONS[state]


def test_closed_has_no_exit() -> None:
    assert TRANSITIONS[State.CLOSED] == frozenset()


def test_closing_only_leads_to_closed() -> None:
    assert TRANSITIONS[State.CLOSING] == frozenset({State.CLOSED})
    assert reachable(State.CLOSING) == {State.CLOSED}


@pytest.mark.parametrize(
    "start",
    [
        State.FINISHING,
        State.LINGERING,
        State.CLOSING,
        State.CLOSED,
        State.HANDING_OFF,
        State.MOVED,
    ],
)
def test_nothing_reads_again_once_it_stopped_reading(start: State) -> None:
    assert not reachable(start) & {State.NEW, State.READING, State.IDLE}


def test_a_moved_connection_only_closes_and_a_handoff_ends_moved_drained_or_closed() -> None:
    assert TRANSITIONS[State.MOVED] == frozenset({State.CLOSING})
    assert TRANSITIONS[State.HANDING_OFF] == frozenset(
        {State.MOVED, State.FINISHING, State.CLOSING}
    )
    assert State.HANDING_OFF in TRANSITIONS[State.IDLE] & TRANSITIONS[State.READING]


def test_no_state_moves_to_itself_or_back_to_new() -> None:
    for state, targets in TRANSITIONS.items():
        assert state not in targets
        assert State.NEW not in targets


def test_closed_is_reached_only_through_closing() -> None:
    """The slot is released on the way from CLOSING to CLOSED: one door, passed once."""
    assert [a for a, b in ALLOWED if b is State.CLOSED] == [State.CLOSING]


@pytest.mark.parametrize(
    ("current", "new"), ALLOWED, ids=[f"{a.value}-{b.value}" for a, b in ALLOWED]
)
def test_check_move_allows_every_move_in_the_table(current: State, new: State) -> None:
    check_move(current, new)


@pytest.mark.parametrize(
    ("current", "new"), REFUSED, ids=[f"{a.value}-{b.value}" for a, b in REFUSED]
)
def test_check_move_refuses_every_move_not_in_the_table(current: State, new: State) -> None:
    with pytest.raises(LifecycleError, match=f"from {current.value} to {new.value}"):
        check_move(current, new)


def test_a_refused_move_is_a_server_bug_not_a_peer_error() -> None:
    assert issubclass(LifecycleError, RuntimeError)
