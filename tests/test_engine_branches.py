"""Branches in a chain on event timelines: the first branch entry whose conditions hold
names the next step (decided when the earliest target is due, so receipts of the step's
message count); the step index stays the position in `steps`; each decision is a
`branched` lifecycle row; replay and live agree; bad branches are refused with
file:line:field."""

from __future__ import annotations

from cdp_triggers.clock import DAY, HOUR
from cdp_triggers.records import CANCELLED, SENT
from tests.engine_helpers import (
    T0,
    config_dir,
    config_issues,
    custom_engine,
    decisions,
    ev,
    firsts,
    lifecycle,
    live,
    order,
    replay,
    sends,
)

CHAIN = """id: chain
kind: marketing
start: {event: signed_up}
cancel_on:
  - event: order_placed
steps:
  - id: hello
    template: welcome_1
    channels: [email, push]
    cascade:
      email: {wait: 2h, until: [opened]}
    branch:
      - when: [{field: instance.previous_outcome, op: in, value: [opened, clicked]}]
        goto: readers
      - when: [{field: instance.previous_channel, op: eq, value: push}]
        goto: pushed
      - goto: end
  - id: readers
    delay: 1d
    template: welcome_2
    channels: [email]
    branch: [{goto: end}]
  - id: pushed
    delay: 2d
    template: welcome_3
    channels: [push]
"""


def run(tmp_path, events, horizon=T0 + 5 * DAY):
    eng = custom_engine(tmp_path, triggers={"chain": CHAIN})
    return [o for o in replay(eng, events, horizon) if getattr(o, "trigger_id", "") == "chain"]


def receipt(kind: str, at_min: float, send_id: str, channel: str = "email"):
    return ev(f"message_{kind}", at_min, send_id=send_id, channel=channel)


def the_email(tmp_path, start):
    [email] = [s for s in sends(run(tmp_path / "probe", [start], T0 + HOUR)) if s.step == 0]
    return email


def test_an_opened_message_goes_to_its_branch_a_day_later(tmp_path):
    start = ev("signed_up", 0)
    email = the_email(tmp_path, start)
    out = run(tmp_path, [start, receipt("opened", 30, email.send_id)])
    assert [(s.step, s.template, s.ts) for s in firsts(out)] == [
        (0, "welcome_1", T0), (1, "welcome_2", T0 + DAY)]
    assert [(b.reason, b.ts) for b in lifecycle(out, "branched")] == [
        ("hello→readers", T0 + DAY), ("readers→end", T0 + DAY)]
    assert len(lifecycle(out, "completed")) == 1


def test_a_click_counts_as_read_and_a_receipt_until_the_decision_counts(tmp_path):
    """The cascade moved on to push (no open within 2 h), then the e-mail was clicked the
    next morning, before the branch was decided: the best receipt is what counts."""
    start = ev("signed_up", 0)
    email = the_email(tmp_path, start)
    out = run(tmp_path, [start, receipt("clicked", 20 * 60, email.send_id)])
    assert [s.channel for s in sends(out) if s.step == 0] == ["email", "push"]
    assert [s.step for s in firsts(out)] == [0, 1]
    assert [b.reason for b in lifecycle(out, "branched")] == ["hello→readers", "readers→end"]


def test_unread_goes_to_the_next_matching_entry_by_channel(tmp_path):
    out = run(tmp_path, [ev("signed_up", 0)])
    # no receipt: the cascade went e-mail → push; previous_channel is push
    assert [(s.step, s.channel, s.ts) for s in firsts(out)] == [
        (0, "email", T0), (2, "push", T0 + 2 * DAY)]
    # decided when the earliest target is due (readers: 1 day), the chosen one 2 days in
    assert [(b.reason, b.ts) for b in lifecycle(out, "branched")] == [
        ("hello→pushed", T0 + DAY)]


def test_the_last_entry_ends_the_chain(tmp_path):
    chain = CHAIN.replace("channels: [email, push]", "channels: [email]")
    eng = custom_engine(tmp_path, triggers={"chain": chain})
    out = replay(eng, [ev("signed_up", 0)], T0 + 5 * DAY)
    out = [o for o in out if getattr(o, "trigger_id", "") == "chain"]
    assert [s.step for s in sends(out)] == [0]
    assert [b.reason for b in lifecycle(out, "branched")] == ["hello→end"]
    assert len(lifecycle(out, "completed")) == 1


def test_a_cancel_while_the_branch_waits_ends_the_chain_without_a_message_row(tmp_path):
    out = run(tmp_path, [ev("signed_up", 0), order(5 * 60)])
    assert [(d.step, d.status) for d in decisions(out)] == [(0, SENT), (0, SENT)]
    assert [lc.reason for lc in lifecycle(out, "cancelled")] == ["order_placed"]
    assert not lifecycle(out, "branched") and CANCELLED not in {
        d.status for d in decisions(out)}


def test_replay_and_live_branch_alike(tmp_path):
    eng = custom_engine(tmp_path, triggers={"chain": CHAIN})
    starts = [ev("signed_up", i * 7, f"c{i}") for i in range(6)]
    emails = {s.customer_id: s for s in sends(replay(eng, starts, T0 + 3 * HOUR))
              if s.channel == "email" and s.trigger_id == "chain"}
    events = list(starts)
    for i, c in enumerate(sorted(emails)):
        if i % 3 == 0:
            events.append(ev("message_opened", 40 + i, c, send_id=emails[c].send_id,
                             channel="email"))
        elif i % 3 == 1:
            events.append(order(30 * 60 + i, c))
    events.sort(key=lambda e: e.ts)

    def key(out):
        return sorted(
            (type(o).__name__, o.customer_id, getattr(o, "step", -1), getattr(o, "status", ""),
             getattr(o, "action", ""), o.reason, o.ts)
            for o in out if type(o).__name__ in ("Decision", "Lifecycle"))

    horizon = T0 + 5 * DAY
    replayed, lived = key(replay(eng, events, horizon)), key(live(eng, events, horizon))
    assert replayed == lived
    reasons = {r[5] for r in replayed if r[4] == "branched"}
    assert {"hello→readers", "hello→pushed"} <= reasons


CONFIG_ERRORS = """id: chain
kind: marketing
start: {event: signed_up}
steps:
  - id: hello
    template: welcome_1
    channels: [email]
    branch:
      - when: [{field: instance.previous_outcome, op: eq, value: opened}]
        goto: redaers
      - when: [{field: instance.previous_outcome, op: eq, value: clicked}]
        goto: hello
  - id: readers
    template: welcome_2
    channels: [email]
  - template: welcome_3
    channels: [email]
    branch:
      - goto: end
      - goto: readers
"""


def test_bad_branches_are_refused_with_file_line_and_field(tmp_path):
    issues = config_issues(config_dir(tmp_path, triggers={"chain": CONFIG_ERRORS}))
    got = [i.split("/triggers/")[-1] for i in issues]
    assert got == [
        "chain.yaml:10:15 steps[0].branch[0].goto: unknown step 'redaers'; did you mean "
        "'readers'? (step ids: hello, readers, end)",
        "chain.yaml:11:15 steps[0].branch[1].when: the last branch entry must have no "
        "'when' (e.g. {goto: end}), so the chain always knows where to go",
        "chain.yaml:12:15 steps[0].branch[1].goto: goes back to steps[0] ('hello'): a chain "
        "only moves forward (no loops)",
        "chain.yaml:13:5 steps[1]: unreachable: no path from the first step leads here (no "
        "branch goes to it)",
        "chain.yaml:16:5 steps[2]: unreachable: no path from the first step leads here (it "
        "has no id for a branch's goto)",
    ], issues


def test_an_entry_after_an_unconditional_one_and_a_bad_outcome_are_refused(tmp_path):
    text = CHAIN.replace("value: [opened, clicked]", "value: [opened, red]").replace(
        "      - goto: end\n", "      - goto: end\n      - goto: readers\n")
    issues = config_issues(config_dir(tmp_path, triggers={"chain": text}))
    assert any("steps[0].branch[0].when[0]: instance.previous_outcome is one of none, "
               "delivered, opened, clicked; not 'red'" in i for i in issues), issues
    assert any("steps[0].branch[3]: unreachable: branch[2] before it has no 'when', so the "
               "chain always goes there" in i for i in issues), issues


def test_step_index_stays_the_position_so_send_ids_do_not_move(tmp_path):
    out = run(tmp_path, [ev("signed_up", 0)])
    [last] = [s for s in sends(out) if s.template == "welcome_3"]
    assert last.step == 2  # the position of 'pushed' in steps


def test_a_new_config_without_the_branch_goes_on_in_order(tmp_path):
    """An instance waiting for its branch when the config loses it: the next step in
    order, no error."""
    from cdp_triggers.events import Event
    from state.customer import CustomerState
    from state.profiles import DictProfileStore
    from tests.engine_helpers import reachable

    eng = custom_engine(tmp_path / "a", triggers={"chain": CHAIN})
    store = DictProfileStore([reachable("c1")])
    st = CustomerState("c1")
    eng.handle(st, Event("x1", "signed_up", "c1", T0, {}), T0, store.get)
    eng.handle(st, None, T0 + 3 * HOUR, store.get)  # e-mail, then push: the branch waits
    [inst] = [i for i in st.instances.values() if i.trigger_id == "chain"]
    assert inst.branching
    head, rest = CHAIN.split("    branch:\n", 1)
    plain = head + rest.split("      - goto: end\n", 1)[1].replace("    branch: [{goto: end}]\n",
                                                                  "")
    new = custom_engine(tmp_path / "b", triggers={"chain": plain})
    out = new.handle(st, None, T0 + 5 * DAY, store.get)
    assert [s.step for s in sends(out) if s.trigger_id == "chain"] == [1, 2]
