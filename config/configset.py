"""The loaded config set: what the engine, the flows and the checks read.

Its own module so that the cross-file checks (:mod:`config.checks`,
:mod:`config.metric_checks`) can name it while :mod:`config.loader`, which builds it, runs
them: no import circle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from config.documents import Document
from config.events import EventRegistry
from config.schema import Policy, Rfm, Segment, Trigger
from config.templates import Template


@dataclass(frozen=True)
class ConfigSet:
    triggers: tuple[Trigger, ...]
    policy: Policy
    version: str
    files: tuple[str, ...] = field(default=())
    templates: dict[str, Template] = field(default_factory=dict)  # empty: no registry
    events: EventRegistry | None = field(default=None, compare=False)  # None: no events.yaml
    # the parsed trigger file of each trigger id (positions for the cross-file checks)
    documents: dict[str, Document] = field(default_factory=dict, compare=False, repr=False)
    segments: tuple[Segment, ...] = ()  # config/segments/*.yaml
    rfm: Rfm = field(default_factory=Rfm)  # config/rfm.yaml (defaults when absent)
    # the parsed segment file of each segment id
    segment_documents: dict[str, Document] = field(default_factory=dict, compare=False,
                                                   repr=False)

    def trigger(self, trigger_id: str) -> Trigger | None:
        return next((t for t in self.triggers if t.id == trigger_id), None)

    def names_event(self, event_type: str) -> bool:
        """Whether a trigger (enabled or not), segment or RFM setting names this event type
        anywhere: as a start, exit or reset, in a condition (a value, a
        ``customer.events.<type>`` count) or as any other word. When none does, events of
        that type change no decision, so a step that only *makes* them (the product
        step's ``price_dropped``/``back_in_stock``) may skip the work. Conservative: a
        template or variant id spelt the same counts as naming it."""
        words = self.__dict__.get("_words")
        if words is None:
            parts = [t.model_dump_json() for t in self.triggers]
            parts += [s.model_dump_json() for s in self.segments]
            parts.append(self.rfm.model_dump_json())
            words = frozenset(re.findall(r"[A-Za-z0-9_]+", " ".join(parts)))
            object.__setattr__(self, "_words", words)  # frozen: computed once, kept
        return event_type in words
