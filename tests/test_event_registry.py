"""The event registry: unknown event types and props paths an event type lacks are refused
by `validate`; list paths need any/all, evaluated item by item; events.yaml declares custom
events and extra props; each config file is parsed once."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.events import builtin_types
from config.loader import DEFAULT_CONFIG_DIR, load_config
from config.schema import Condition
from operators.conditions import Scope, holds, matches
from tests.engine_helpers import config_issues, ev, order

EVENTS = """\
events:
  segment_entered:
    props: {segment: string}
  order_placed:
    props:
      items: [{category: string, tags: [string]}]
"""

ORDER = """\
id: coffee
start:
  event: order_placed
  where:
    - {field: props.total, op: gte, value: 10}
key: props.order_id
steps:
  - template: coffee
    channels: [email]
    vars: {order_id: event.props.order_id}
"""


def setup(tmp_path: Path, trigger: str = ORDER, events: str | None = EVENTS) -> Path:
    (tmp_path / "triggers").mkdir(exist_ok=True)
    (tmp_path / "triggers" / "t.yaml").write_text(trigger)
    if events is not None:
        (tmp_path / "events.yaml").write_text(events)
    return tmp_path


def one_issue(tmp_path: Path, trigger: str, events: str | None = EVENTS) -> str:
    [msg] = config_issues(setup(tmp_path, trigger, events))
    return msg


def test_builtin_registry_comes_from_the_event_contract_and_the_product_step():
    types = builtin_types()
    assert types["order_placed"].props["items"] == [
        {"product_id": "string", "quantity": "integer", "price": "number"}]
    assert types["price_dropped"].props == {"product_id": "string", "price": "number",
                                            "old_price": "number", "interest": "string"}
    assert types["signed_up"].props == {"birthday": "string", "registered_at": "any"}
    shipped = load_config(DEFAULT_CONFIG_DIR).events
    assert shipped is not None and "segment_entered" in shipped and "segment_left" in shipped


def test_a_consistent_trigger_loads(tmp_path):
    cfg = load_config(setup(tmp_path))
    assert cfg.events is not None and cfg.events.get("order_placed").props["items"] == [
        {"product_id": "string", "quantity": "integer", "price": "number",
         "category": "string", "tags": ["string"]}]


def test_unknown_event_type_with_a_suggestion(tmp_path):
    msg = one_issue(tmp_path, ORDER.replace("key: props.order_id\n", "").replace(
        "event: order_placed", "event: [order_shipped, order_deliverd]").replace(
        "    - {field: props.total, op: gte, value: 10}\n", "").replace("  where:\n", ""))
    assert msg.endswith("triggers/t.yaml:3:26 start.event[1]: unknown event type "
                        "'order_deliverd'; did you mean 'order_delivered'? (declare custom "
                        "events in events.yaml)")


def test_unknown_event_types_in_cancel_on_and_reset_on(tmp_path):
    text = ORDER + "wait: {inactivity: 1h, reset_on: [chekout_started]}\n" \
                   "cancel_on:\n  - event: segment_entred\n"
    msgs = config_issues(setup(tmp_path, text))
    assert any("wait.reset_on[0]: unknown event type 'chekout_started'; did you mean "
               "'checkout_started'?" in m for m in msgs), msgs
    assert any("cancel_on[0].event: unknown event type 'segment_entred'; did you mean "
               "'segment_entered'?" in m for m in msgs), msgs


def test_key_the_event_does_not_have(tmp_path):
    msg = one_issue(tmp_path, ORDER.replace("key: props.order_id", "key: props.ordr_id"))
    assert msg.endswith("triggers/t.yaml:6:6 key: the key must be in every start event: "
                        "order_placed has no props.ordr_id (props has: order_id, total, "
                        "currency, items); did you mean props.order_id?")


def test_where_path_the_event_does_not_have(tmp_path):
    msg = one_issue(tmp_path, ORDER.replace("props.total", "props.totl"))
    assert "triggers/t.yaml:5:15 start.where[0].field: order_placed has no props.totl" in msg
    msg = one_issue(tmp_path, ORDER.replace("event: order_placed", "event: signed_up")
                    .replace("key: props.order_id\n", "").replace(
                        "    vars: {order_id: event.props.order_id}\n", ""))
    assert msg.endswith("start.where[0].field: signed_up has no props.total (props has: "
                        "birthday, registered_at)")


def test_a_path_into_a_list_needs_a_quantifier(tmp_path):
    msg = one_issue(tmp_path, ORDER.replace(
        "{field: props.total, op: gte, value: 10}",
        "{field: props.items.category, op: eq, value: coffee}"))
    assert msg.endswith("start.where[0].field: props.items is a list in order_placed, so "
                        "props.items.category matches nothing: test its items with "
                        "{field: props.items, any: {field: category, op: …, value: …}} "
                        "(or all:)")


def test_quantified_paths_are_checked_inside_the_items(tmp_path):
    good = ORDER.replace("{field: props.total, op: gte, value: 10}",
                         "{field: props.items, any: [{field: category, op: eq, value: coffee},"
                         " {field: tags, any: {op: eq, value: fair}}]}")
    assert load_config(setup(tmp_path, good)).trigger("coffee") is not None
    msg = one_issue(tmp_path, good.replace("field: category", "field: categry"))
    assert msg.endswith("start.where[0].field: order_placed has no props.items[].categry "
                        "(props.items[] has: product_id, quantity, price, category, tags); "
                        "did you mean props.items[].category?")
    msg = one_issue(tmp_path, ORDER.replace("{field: props.total, op: gte, value: 10}",
                                            "{field: props.total, all: {op: gt, value: 1}}"))
    assert msg.endswith("start.where[0].field: props.total is number in order_placed, not a "
                        "list: 'all' tests the items of a list")


def test_vars_that_are_always_null(tmp_path):
    msg = one_issue(tmp_path, ORDER.replace("event.props.order_id", "event.props.ordr_id"))
    assert msg.endswith("triggers/t.yaml:10:22 steps[0].vars.order_id: always null: "
                        "order_placed has no props.ordr_id (props has: order_id, total, "
                        "currency, items); did you mean props.order_id? (event.props is the "
                        "props of the instance's latest event: order_placed)")
    # in a reset_on event's props only: sometimes set, so allowed
    text = ORDER.replace("event.props.order_id", "event.props.cart_id") + (
        "wait: {inactivity: 1h, reset_on: [checkout_started]}\n")
    assert load_config(setup(tmp_path, text)).trigger("coffee") is not None


def test_when_has_no_event_and_same_key_needs_the_key(tmp_path):
    text = ORDER.replace("    vars:", "    when: [{field: props.total, op: gt, value: 5}]\n"
                                    "    vars:")
    text += "cancel_on:\n  - {event: signed_up, same_key: true}\n"
    msgs = config_issues(setup(tmp_path, text))
    assert any("steps[0].when[0].field: a step's when is checked at send time, with no event: "
               "props.total is never set (use customer.<metric> or instance.<field>)" in m
               for m in msgs), msgs
    assert any(m.endswith("cancel_on[0].same_key: with same_key it never cancels: signed_up "
                          "has no props.order_id (props has: birthday, registered_at)")
               for m in msgs), msgs


def test_events_yaml_errors_are_located(tmp_path):
    bad = EVENTS.replace("{segment: string}", "{segment: strng, tags: [string, number]}")
    msgs = config_issues(setup(tmp_path, events=bad))
    assert any("events.yaml:3:12 events.segment_entered.props: props.segment: unknown type "
               "'strng'" in m for m in msgs), msgs
    assert any("a list type has exactly one item" in m for m in msgs), msgs
    changed = EVENTS + "  order_paid:\n    props: {order_id: number}\n"
    [msg] = config_issues(setup(tmp_path, events=changed))
    assert msg.endswith("events.yaml:8:12 events.order_paid.props.order_id: built in as "
                        "string: events.yaml may add props, not change their type")


def test_without_events_yaml_event_types_are_not_checked(tmp_path):
    text = ORDER.replace("event: order_placed", "event: anything_custom")
    assert load_config(setup(tmp_path, text, events=None)).events is None


# ---- the any/all quantifier, evaluated on events --------------------------------------------

def cond(**kw) -> Condition:
    return Condition.model_validate(kw)


def placed(*items: dict) -> object:
    e = order(0)
    return ev("order_placed", 0, **{**e.props, "items": list(items)})


COFFEE = {"product_id": "p1", "quantity": 1, "price": 9.0, "category": "coffee",
          "tags": ["fair", "organic"]}
TEA = {"product_id": "p2", "quantity": 2, "price": 4.0, "category": "tea", "tags": []}


def test_any_item_whose_category_is_coffee():
    c = cond(field="props.items", any={"field": "category", "op": "eq", "value": "coffee"})
    assert holds(c, Scope(placed(TEA, COFFEE)))
    assert not holds(c, Scope(placed(TEA)))
    assert not holds(c, Scope(placed()))  # no items: none is coffee
    assert not holds(c, Scope(ev("order_placed", 0, order_id="o", total=1.0)))  # no list


def test_all_items_and_several_conditions_on_one_item():
    c = cond(field="props.items", all={"field": "price", "op": "gte", "value": 4})
    assert holds(c, Scope(placed(TEA, COFFEE))) and holds(c, Scope(placed()))
    assert not holds(c, Scope(placed(TEA, {**COFFEE, "price": 1.0})))
    same_item = cond(field="props.items", any=[{"field": "category", "value": "tea"},
                                               {"field": "price", "op": "gt", "value": 5}])
    assert not holds(same_item, Scope(placed(TEA, COFFEE)))  # cheap tea, dear coffee
    assert holds(same_item, Scope(placed({**TEA, "price": 6.0})))


def test_nested_lists_and_the_item_itself():
    c = cond(field="props.items", any={"field": "tags", "any": {"op": "eq", "value": "fair"}})
    assert holds(c, Scope(placed(TEA, COFFEE))) and not holds(c, Scope(placed(TEA)))
    tags = cond(field="props.tags", any={"op": "in", "value": ["sale", "new"]})
    assert holds(tags, Scope(ev("product_viewed", 0, product_id="p", tags=["x", "new"])))


def test_a_trigger_starts_on_an_order_with_a_coffee_item(tmp_path):
    text = ORDER.replace("{field: props.total, op: gte, value: 10}",
                         "{field: props.items, any: {field: category, op: eq, value: coffee}}")
    trigger = load_config(setup(tmp_path, text)).trigger("coffee")
    assert matches(trigger.start, placed(TEA, COFFEE))
    assert not matches(trigger.start, placed(TEA))


@pytest.mark.parametrize("bad, message", [
    ({"field": "props.items", "any": {"value": 1}, "op": "eq"},
     "with 'any'/'all', op and value go inside, on the item"),
    ({"field": "props.items", "any": {"value": 1}, "all": {"value": 1}},
     "set one of 'any' or 'all', not both"),
    ({"field": "customer.orders_count", "any": {"value": 1}},
     "'any'/'all' test the items of a list: the field must be props.<path>"),
])
def test_quantifier_misuse_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        cond(**bad)


# ---- one parse per file ---------------------------------------------------------------

def test_each_file_is_parsed_once(tmp_path, monkeypatch):
    import yaml

    import config.loader as loader

    setup(tmp_path)
    (tmp_path / "templates.yaml").write_text("templates:\n  coffee: {channels: [email], "
                                             "vars: [order_id]}\n")
    (tmp_path / "policy.yaml").write_text("late_event_grace: 5m\n")
    calls = []
    real = loader.parse_document
    monkeypatch.setattr(loader, "parse_document", lambda text, name: calls.append(name)
                        or real(text, name))
    for fn in ("compose", "safe_load", "load"):
        monkeypatch.setattr(yaml, fn, lambda *a, **k: pytest.fail("a second parse"))
    cfg = load_config(tmp_path)
    assert sorted(Path(c).name for c in calls) == [
        "events.yaml", "policy.yaml", "t.yaml", "templates.yaml"]
    assert cfg.documents["coffee"].marks[("key",)] == (6, 6)


def test_public_helpers_and_the_old_name():
    from config.documents import display_path
    from config.loader import _display

    assert _display is display_path
    for module in ("checks", "loader", "events", "templates", "schema"):
        text = (DEFAULT_CONFIG_DIR / f"{module}.py").read_text()
        assert "import _" not in text and not any(
            "import" in line and ", _" in line for line in text.splitlines()), module
