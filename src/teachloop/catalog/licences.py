"""Licences computed, not typed: licence classes, their lattice, and the effective licence of what is sold.

Every row of a dataset carries the licence it is used under (``DatasetRow.license``: an SPDX id
or expression, or ``LicenseRef-...``): the licence of its source or the grant of the expert who
wrote it. ``classify(licence)`` maps it to ``LicenceTerms``:

- ``use``: what it may be used for, ordered ``research`` < ``non-commercial`` < ``commercial``;
- ``derivatives``: whether adapted material (a derived dataset, a fine-tuned adapter) may be shared;
- ``attribution`` and ``share_alike``: duties that travel with the data.

``SPDX`` is the table of known ids (CC0-1.0, CC-BY-4.0, CC-BY-SA-4.0, CC-BY-NC-4.0, CC-BY-NC-SA-4.0,
CC-BY-ND-4.0, Apache-2.0, MIT, ODC-By-1.0, ...) plus the custom classes
``LicenseRef-proprietary`` (the organisation's own data: it decides), ``LicenseRef-research-only``
and ``LicenseRef-non-commercial``. An SPDX expression ``A OR B`` is the more permissive of the two
(the licensee chooses), ``A AND B`` the more restrictive (``meet``); ``WITH`` exceptions are ignored.
An unknown id is refused (``InvalidInput`` naming it): a licence nobody classified sells nothing.

The lattice: ``meet`` is the most restrictive combination (lowest use, derivatives only if both
allow, every duty of either), so ``effective(licences)`` -- the meet of all -- never grants more
than any one input ("licences never widen"). ``exceeds(grant, effective)`` lists what an offer's
grant asks beyond the effective terms; ``check_grant`` refuses such an offer, naming the sources
(licences) that forbid it. Pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum
from functools import reduce

from pydantic import BaseModel, ConfigDict, Field

from teachloop.core.errors import InvalidInput


class Use(IntEnum):
    """What data may be used for; a larger value permits more."""

    RESEARCH = 1
    NON_COMMERCIAL = 2
    COMMERCIAL = 3

    @property
    def label(self) -> str:
        """``research``, ``non-commercial`` or ``commercial``."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, value: object, param: str = "use") -> Use:
        """The ``Use`` named ``value`` (its label or name); ``InvalidInput`` otherwise."""
        if isinstance(value, Use):
            return value
        text = str(value).strip().lower().replace("_", "-")
        for use in cls:
            if use.label == text:
                return use
        raise InvalidInput(
            f"use must be one of {', '.join(u.label for u in cls)}, got {value!r}", param=param
        )


class LicenceTerms(BaseModel):
    """The terms of one licence class (a point of the lattice)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    use: Use = Field(description="research < non-commercial < commercial.")
    derivatives: bool = Field(description="Whether adapted material (derived data, adapters) may be shared.")
    attribution: bool = Field(description="Duty: credit the sources.")
    share_alike: bool = Field(description="Duty: share adapted material under the same terms.")

    def summary(self) -> str:
        """A short human text, e.g. ``non-commercial, no derivatives, attribution``."""
        parts = [self.use.label, "derivatives" if self.derivatives else "no derivatives"]
        parts += [d for d, on in (("attribution", self.attribution), ("share-alike", self.share_alike)) if on]
        return ", ".join(parts)


def _t(use: Use, derivatives: bool = True, attribution: bool = False, share_alike: bool = False) -> LicenceTerms:
    return LicenceTerms(use=use, derivatives=derivatives, attribution=attribution, share_alike=share_alike)


C, NC, R = Use.COMMERCIAL, Use.NON_COMMERCIAL, Use.RESEARCH
#: Known licence ids and their classes (SPDX ids plus the platform's custom ``LicenseRef-`` classes).
SPDX: Mapping[str, LicenceTerms] = {
    "CC0-1.0": _t(C),
    "PDDL-1.0": _t(C),
    "MIT": _t(C, attribution=True),
    "Apache-2.0": _t(C, attribution=True),
    "BSD-3-Clause": _t(C, attribution=True),
    "CC-BY-4.0": _t(C, attribution=True),
    "CC-BY-3.0": _t(C, attribution=True),
    "ODC-By-1.0": _t(C, attribution=True),
    "CDLA-Permissive-2.0": _t(C, attribution=True),
    "CC-BY-SA-4.0": _t(C, attribution=True, share_alike=True),
    "ODbL-1.0": _t(C, attribution=True, share_alike=True),
    "CDLA-Sharing-1.0": _t(C, attribution=True, share_alike=True),
    "CC-BY-ND-4.0": _t(C, derivatives=False, attribution=True),
    "CC-BY-NC-4.0": _t(NC, attribution=True),
    "CC-BY-NC-SA-4.0": _t(NC, attribution=True, share_alike=True),
    "CC-BY-NC-ND-4.0": _t(NC, derivatives=False, attribution=True),
    "LicenseRef-proprietary": _t(C),
    "LicenseRef-non-commercial": _t(NC),
    "LicenseRef-research-only": _t(R, derivatives=False),
}
#: The top of the lattice (what an organisation's own data allows).
TOP = _t(C)


def meet(a: LicenceTerms, b: LicenceTerms) -> LicenceTerms:
    """The most restrictive combination of ``a`` and ``b`` (greatest lower bound)."""
    return LicenceTerms(
        use=min(a.use, b.use),
        derivatives=a.derivatives and b.derivatives,
        attribution=a.attribution or b.attribution,
        share_alike=a.share_alike or b.share_alike,
    )


def join(a: LicenceTerms, b: LicenceTerms) -> LicenceTerms:
    """The more permissive of two alternatives (an SPDX ``OR``: the licensee picks)."""
    return LicenceTerms(
        use=max(a.use, b.use),
        derivatives=a.derivatives or b.derivatives,
        attribution=a.attribution and b.attribution,
        share_alike=a.share_alike and b.share_alike,
    )


def allows(wider: LicenceTerms, narrower: LicenceTerms) -> bool:
    """Whether ``narrower`` grants nothing ``wider`` does not (the lattice order ``narrower <= wider``)."""
    return not exceeds(narrower, wider)


def classify(licence: str, param: str = "license") -> LicenceTerms:
    """The terms of an SPDX id or expression, or a ``LicenseRef-`` class; ``InvalidInput`` if unknown."""
    text = (licence or "").strip()
    if not text:
        raise InvalidInput("a licence is required", param=param)
    alternatives = [a.strip().strip("()") for a in text.split(" OR ")]
    terms = []
    for alt in alternatives:
        parts = [p.strip().strip("()").split(" WITH ")[0].strip() for p in alt.split(" AND ")]
        known = []
        for part in parts:
            found = SPDX.get(part) or next((t for k, t in SPDX.items() if k.lower() == part.lower()), None)
            if found is None:
                raise InvalidInput(
                    f"licence {part!r} is not classified: use an SPDX id the platform knows "
                    f"({', '.join(sorted(k for k in SPDX if not k.startswith('LicenseRef-')))}) or "
                    "LicenseRef-proprietary, LicenseRef-non-commercial, LicenseRef-research-only",
                    param=param,
                )
            known.append(found)
        terms.append(reduce(meet, known))
    return reduce(join, terms)


def effective(licences: Iterable[str], param: str = "license") -> LicenceTerms:
    """The meet of every licence's terms (``TOP`` for none): what the whole may be licensed under."""
    return reduce(meet, (classify(lic, param) for lic in licences), TOP)


def exceeds(grant: LicenceTerms, allowed: LicenceTerms) -> list[str]:
    """What ``grant`` asks beyond ``allowed`` (empty when it stays within): one phrase per excess."""
    out = []
    if grant.use > allowed.use:
        out.append(f"{grant.use.label} use (the sources allow {allowed.use.label})")
    if grant.derivatives and not allowed.derivatives:
        out.append("sharing derivatives (a source forbids derivatives)")
    if allowed.attribution and not grant.attribution:
        out.append("dropping the attribution duty")
    if allowed.share_alike and not grant.share_alike:
        out.append("dropping the share-alike duty")
    return out


def check_grant(grant: LicenceTerms, licences: Mapping[str, int], param: str = "grant") -> LicenceTerms:
    """``grant`` if every licence in ``licences`` (licence -> rows under it) allows it; else ``InvalidInput``.

    The refusal names each licence that forbids the grant and how many rows came from it.
    """
    allowed = effective(licences, param)
    excess = exceeds(grant, allowed)
    if excess:
        culprits = [
            f"{lic} ({n} row{'s' if n != 1 else ''})"
            for lic, n in sorted(licences.items())
            if exceeds(grant, classify(lic))
        ]
        raise InvalidInput(
            f"the offer grants {' and '.join(excess)}, which the sources forbid: {', '.join(culprits)}; "
            f"the effective licence is {allowed.summary()}",
            param=param,
        )
    return grant


__all__ = [
    "SPDX",
    "TOP",
    "LicenceTerms",
    "Use",
    "allows",
    "check_grant",
    "classify",
    "effective",
    "exceeds",
    "join",
    "meet",
]
