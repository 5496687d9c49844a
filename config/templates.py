"""The message template registry (``config/templates.yaml``).

Each template id names the channels it has content for and the variables its content
needs. Trigger steps are checked against it (:mod:`config.checks`). Variables are template
data only: a registry may never ask for a raw e-mail address or phone number.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from config.schema import Channel, Ident

TEMPLATES_FILE = "templates.yaml"
CONTACT_DATA = re.compile(r"e_?mail|phone|mobile|msisdn|address")


def _no_contact_data(name: str) -> str:
    if CONTACT_DATA.search(name):
        raise ValueError(f"no raw contact data in templates: '{name}' "
                         "(gateways resolve addresses from the customer id)")
    return name


Var = Annotated[Ident, AfterValidator(_no_contact_data)]


class Template(BaseModel):
    """One message template: which channels have content, which variables it needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    channels: list[Channel] = Field(min_length=1, description="channels with content")
    vars: list[Var] = Field(default_factory=list,
                            description="variables the content needs (step `vars` keys)")

    @field_validator("channels", "vars")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dupes = sorted({x for x in v if v.count(x) > 1})
        if dupes:
            raise ValueError(f"listed twice: {', '.join(dupes)}")
        return v


class TemplateRegistry(BaseModel):
    """The whole ``templates.yaml``: ``templates: {id: Template}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    templates: dict[Ident, Template] = Field(min_length=1)

