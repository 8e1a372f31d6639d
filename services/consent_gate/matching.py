"""Purpose matching: does a participant's DUO consent allow a research purpose? APPROVE, DENY or ABSTAIN.

One module for consent_gate, index and publish. Permissions follow the DUOS v4 matcher
(DataBiosphere/consent-ontology, DataUseMatcherV4 and DataUseMatchCasesV4); DUOS has no rules for most
modifiers, so those below are gdx's own. ABSTAIN means a human must review: it never releases data.

Permissions: the consent must hold one, and one of its permissions must allow the purpose's primary.
  NRES     allows every purpose.
  GRU      allows GRU, HMB, DS and POA purposes (DUOS v4 approves POA and methods research on GRU data).
  HMB      allows HMB and DS purposes; denies GRU (research that is not health research, such as
           non-medical methods research) and POA (DUOS v4; DUO: HMB "does not include the study of
           population origins or ancestry").
  DS:X     allows a DS purpose when every requested disease is X or, with a DiseaseOntology, a subclass
           of X (exact match without one); denies GRU, HMB and POA purposes.
  POA      allows POA purposes only.
Purposes DUOS will not decide (population research, research on controls): ABSTAIN.
Modifiers: each adds a condition; none can allow what the permissions deny.
  NPU      DENY unless the requester is not-for-profit.
  NCU      DENY commercial use (unstated counts as commercial unless the requester is not-for-profit).
  NPUNCU   both of the above.
  NPOA     DENY POA and population research.
  NMDS     DENY methods development research.
  GSO      DENY a purpose that is not a genetic study; ABSTAIN when unstated.
  IRB      DENY unless the purpose has ethics (IRB/ERB) approval.
  GS:R     DENY when the purpose's region is not R (case-insensitive); ABSTAIN when unstated.
  PUB      DENY when the requester declines to publish; ABSTAIN when unstated.
  RTN      DENY when the requester declines to return results; ABSTAIN when unstated.
  COL:X    DENY when the named collaborator is not X; ABSTAIN when unstated. Bare COL: ABSTAIN.
  US:X PS:X IS:X  DENY unless the purpose names user / project / institution X. Bare US, PS, IS: DENY
           when the purpose names none, else ABSTAIN (the approved list is the committee's, not ours).
  TS:D     DENY after date D (use is allowed through D).
  MOR:D    ABSTAIN before date D (publication moratorium); no condition from D on.
  RS       ABSTAIN: a human must read which research the restriction means.
  CC       no condition: it extends use to clinical care and restricts nothing.
  other    ABSTAIN: a newer DUO release may add codes gdx has no rule for.
Combination: any DENY -> DENY, else any ABSTAIN -> ABSTAIN, else APPROVE. An empty consent, one with no
permission, or one with an invalid code -> DENY (default deny). Where this differs from DUOS v4: DENY
wins over ABSTAIN (DUOS lets ABSTAIN win; a certain denial needs no human), and a GRU purpose on a
DS-only consent is denied (DUOS v4 approves it when the HMB flags are unset, which reads as accidental).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from gdx.common.duo import DuoTerm, InvalidDuoCode, parse_code, parse_codes, parse_ontology_id

PURPOSES = ("GRU", "HMB", "DS", "POA")

_PURPOSE_TEXT = {
    "GRU": "general research",
    "HMB": "health/medical/biomedical research",
    "DS": "disease-specific research",
    "POA": "population origins or ancestry research",
}


class Decision(enum.Enum):
    APPROVE = "APPROVE"
    DENY = "DENY"
    ABSTAIN = "ABSTAIN"  # a human must review; nothing is released for it


_RANK = {Decision.DENY: 0, Decision.ABSTAIN: 1, Decision.APPROVE: 2}


@dataclass(frozen=True)
class MatchResult:
    """The decision, every reason ("RULE: why", deciding ones first) and the rule that decided."""

    decision: Decision
    reasons: tuple[str, ...]
    rule: str

    @property
    def approved(self) -> bool:
        return self.decision is Decision.APPROVE


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None


@dataclass(frozen=True)
class ResearchPurpose:
    """What a requester wants to do with the data, and what they have agreed to.

    `None` in an optional field means "not stated": rules that need it ABSTAIN (or DENY, see module doc).
    """

    primary: str  # GRU, HMB, DS or POA
    diseases: tuple[str, ...] = ()  # ontology term ids, exactly when primary is DS
    not_for_profit: bool = False
    commercial: bool | None = None  # None: presumed commercial unless not_for_profit
    methods: bool = False  # methods development (software, algorithms)
    population: bool = False  # population research (DUO:0000032): DUOS abstains
    controls: bool = False  # used as research controls (DUO:0000036): DUOS abstains
    genetic: bool | None = None  # a genetic study (for GSO)
    irb_approved: bool = False
    collaborator: str | None = None
    publication: bool | None = None  # agrees to publish results (PUB)
    return_results: bool | None = None  # agrees to return derived data (RTN)
    region: str | None = None
    user: str | None = None
    project: str | None = None
    institution: str | None = None

    def __post_init__(self) -> None:
        primary = str(self.primary).strip().upper()
        if primary not in PURPOSES:
            raise ValueError(f"research purpose {self.primary!r}: expected one of {', '.join(PURPOSES)}")
        object.__setattr__(self, "primary", primary)
        if isinstance(self.diseases, str):
            raise ValueError("diseases must be a sequence of ontology term ids, not one string")
        diseases = tuple(dict.fromkeys(parse_ontology_id(d) for d in self.diseases))
        if (primary == "DS") != bool(diseases):
            raise ValueError("a DS research purpose needs disease term(s), and only DS takes them")
        object.__setattr__(self, "diseases", diseases)
        for name in ("collaborator", "region", "user", "project", "institution"):
            object.__setattr__(self, name, _text(getattr(self, name)))

    @property
    def is_commercial(self) -> bool:
        return (not self.not_for_profit) if self.commercial is None else self.commercial

    @classmethod
    def from_codes(cls, purpose_code: str | Sequence[str], not_for_profit: bool = False,
                   **values: Any) -> ResearchPurpose:
        """A purpose from DUO codes, as the CLI and visas give it: "HMB", "DS:MONDO:0005148", "GRU", "POA".

        Modifier codes after the primary state what the requester agrees to ("HMB IRB PUB", "GRU NPU",
        "HMB GS:EU COL:lab-x"); keyword arguments (any field) override them. Raises ValueError.
        """
        terms = parse_codes(purpose_code)
        diseases = tuple(str(t.parameter) for t in terms if t.shorthand == "DS")
        primaries = {t.shorthand for t in terms if t.is_permission and t.shorthand != "DS"}
        if "NRES" in primaries:
            raise ValueError("NRES describes consent (no restriction), not a research purpose")
        if diseases:
            primaries.discard("HMB")  # disease-specific research is health research: DS says more
            if primaries:
                raise ValueError(f"research purpose {purpose_code!r}: DS cannot be combined with "
                                 f"{', '.join(sorted(primaries))}")
            primary = "DS"
        elif len(primaries) == 1:
            primary = primaries.pop()
        else:
            raise ValueError(f"research purpose {purpose_code!r}: needs exactly one of GRU, HMB, "
                             "DS:<disease>, POA")
        agreed: dict[str, Any] = {}
        for term in terms:
            if not term.is_permission:
                agreed.update(_purpose_modifier(term, purpose_code))
        agreed["not_for_profit"] = not_for_profit or agreed.get("not_for_profit", False)
        agreed.update(values)
        return cls(primary=primary, diseases=diseases, **agreed)


def _purpose_modifier(term: DuoTerm, purpose_code: object) -> dict[str, Any]:
    flags = {
        "NPU": {"not_for_profit": True},
        "NCU": {"commercial": False},
        "NPUNCU": {"not_for_profit": True, "commercial": False},
        "IRB": {"irb_approved": True},
        "PUB": {"publication": True},
        "RTN": {"return_results": True},
        "GSO": {"genetic": True},
    }
    named = {"COL": "collaborator", "GS": "region", "US": "user", "PS": "project", "IS": "institution"}
    if term.shorthand in flags:
        return flags[term.shorthand]
    if term.shorthand in named and term.parameter is not None:
        return {named[term.shorthand]: term.parameter}
    raise ValueError(f"research purpose {purpose_code!r}: {term} restricts consent and says nothing "
                     "about a research purpose")


class DiseaseOntology:
    """Disease terms and their parents, to decide whether a requested disease lies within a consented one."""

    def __init__(self, parents: Mapping[str, Iterable[str]], aliases: Mapping[str, str] | None = None,
                 source: str = "in memory"):
        self.source = source
        self._parents = {parse_ontology_id(t): tuple(parse_ontology_id(p) for p in ps)
                         for t, ps in parents.items()}
        self._aliases = {parse_ontology_id(a): parse_ontology_id(t) for a, t in (aliases or {}).items()}
        self._ancestors: dict[str, frozenset[str]] = {}

    def __len__(self) -> int:
        return len(self._parents)

    def __contains__(self, term: object) -> bool:
        return isinstance(term, str) and self.canonical(term) in self._parents

    def canonical(self, term: str) -> str:
        """The term's primary id (OBO alt_ids map to it)."""
        term = parse_ontology_id(term)
        return self._aliases.get(term, term)

    def ancestors(self, term: str) -> frozenset[str]:
        """Every superclass of `term`, not including itself; empty for an unknown term."""
        start = self.canonical(term)
        if start in self._ancestors:
            return self._ancestors[start]
        seen: set[str] = set()
        todo = list(self._parents.get(start, ()))
        while todo:  # iterative, and cycle-safe: real ontologies are large and not always clean
            parent = self.canonical(todo.pop())
            if parent not in seen and parent != start:
                seen.add(parent)
                todo.extend(self._parents.get(parent, ()))
        result = frozenset(seen)
        self._ancestors[start] = result
        return result

    def is_within(self, term: str, ancestor: str) -> bool:
        """True when `term` is `ancestor` or one of its subclasses."""
        term, ancestor = self.canonical(term), self.canonical(ancestor)
        return term == ancestor or ancestor in self.ancestors(term)

    @classmethod
    def load(cls, path: Path | str) -> DiseaseOntology:
        """From an .obo file, or else a tab-separated child/parent file."""
        path = Path(path)
        return cls.from_obo(path) if path.suffix.lower() == ".obo" else cls.from_tsv(path)

    @classmethod
    def from_obo(cls, path: Path | str) -> DiseaseOntology:
        """[Term] stanzas of an OBO file: id, is_a and alt_id; obsolete terms are left out."""
        path = Path(path)
        parents: dict[str, list[str]] = {}
        aliases: dict[str, str] = {}
        stanza: str | None = None
        term: dict[str, list[str]] = {}

        def flush() -> None:
            if stanza == "[Term]" and term.get("id") and term.get("is_obsolete", ["false"])[0] != "true":
                tid = term["id"][0]
                parents[tid] = term.get("is_a", [])
                for alt in term.get("alt_id", []):
                    aliases[alt] = tid

        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                line = line.strip()
                if line.startswith("["):
                    flush()
                    stanza, term = line, {}
                    continue
                if stanza != "[Term]" or not line or line.startswith("!"):
                    continue
                tag, _, value = line.partition(":")
                # Drop trailing "! label" comments and "{qualifiers}".
                value = re.sub(r"\s*(\{[^}]*\})?\s*(!.*)?$", "", value.strip())
                if tag in ("id", "is_a", "alt_id"):
                    try:
                        value = parse_ontology_id(value.split()[0] if value else "")
                    except ValueError:
                        raise ValueError(f"{path}:{line_no}: {tag} {value!r} is not a term id") from None
                term.setdefault(tag, []).append(value)
            flush()
        return cls(parents, aliases, str(path))

    @classmethod
    def from_tsv(cls, path: Path | str) -> DiseaseOntology:
        """Lines `child<TAB>parent` (a line with only a child declares a root); '#' starts a comment."""
        path = Path(path)
        parents: dict[str, list[str]] = {}
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                cols = [c.strip() for c in line.split("#", 1)[0].rstrip("\n").split("\t")]
                cols = [c for c in cols if c]
                if not cols or (line_no == 1 and [c.lower() for c in cols] == ["child", "parent"]):
                    continue
                if len(cols) > 2:
                    raise ValueError(f"{path}:{line_no}: expected child<TAB>parent, got {len(cols)} columns")
                try:
                    child = parse_ontology_id(cols[0])
                    entry = parents.setdefault(child, [])
                    if len(cols) == 2:
                        entry.append(parse_ontology_id(cols[1]))
                        parents.setdefault(parse_ontology_id(cols[1]), [])
                except ValueError as exc:
                    raise ValueError(f"{path}:{line_no}: {exc}") from None
        return cls(parents, None, str(path))


@dataclass(frozen=True)
class _Outcome:
    decision: Decision
    rule: str
    reason: str


def _ok(rule: str, reason: str) -> _Outcome:
    return _Outcome(Decision.APPROVE, rule, f"{rule}: {reason}")


def _deny(rule: str, reason: str) -> _Outcome:
    return _Outcome(Decision.DENY, rule, f"{rule}: {reason}")


def _abstain(rule: str, reason: str) -> _Outcome:
    return _Outcome(Decision.ABSTAIN, rule, f"{rule}: {reason}")


def _within(term: str, consented: str, ontology: DiseaseOntology | None) -> bool:
    if ontology is None:
        return term == consented
    return ontology.is_within(term, consented)


def _permission(terms: Sequence[DuoTerm], purpose: ResearchPurpose,
                ontology: DiseaseOntology | None) -> list[_Outcome]:
    """The permissions as a group: the first that allows the purpose, or why each one does not."""
    want = _PURPOSE_TEXT[purpose.primary]
    denials: list[_Outcome] = []
    for term in terms:
        code = term.shorthand
        if code == "NRES":
            return [_ok("NRES", "no restriction on use")]
        if code == "GRU":
            return [_ok("GRU", f"general research use allows {want}")]
        if code == "HMB":
            if purpose.primary in ("HMB", "DS"):
                return [_ok("HMB", f"health/medical/biomedical use allows {want}")]
            denials.append(_deny("HMB", f"allows health/medical/biomedical research only, not {want}"))
        elif code == "POA":
            if purpose.primary == "POA":
                return [_ok("POA", "population origins or ancestry use allows it")]
            denials.append(_deny("POA", f"allows population origins or ancestry research only, not {want}"))
    consented = [str(t.parameter) for t in terms if t.shorthand == "DS"]
    if consented:
        names = ", ".join(consented)
        how = f"by {ontology.source}" if ontology is not None else "exact match, no disease ontology set"
        if purpose.primary != "DS":
            denials.append(_deny("DS", f"allows research on {names} only, not {want}"))
        else:
            outside = [d for d in purpose.diseases if not any(_within(d, c, ontology) for c in consented)]
            if not outside:
                return [_ok("DS", f"{', '.join(purpose.diseases)} within consented {names} ({how})")]
            denials.append(_deny("DS", f"{', '.join(outside)} not {names} or a subclass of it ({how})"))
    return denials


def _named(rule: str, term: DuoTerm, given: str | None, what: str) -> _Outcome:
    if term.parameter is None:
        if given is None:
            return _deny(rule, f"use limited to approved {what}s and the purpose names no {what}")
        return _abstain(rule, f"a human must confirm {what} {given!r} is approved")
    if given is None:
        return _deny(rule, f"use limited to {what} {term.parameter!r} and the purpose names none")
    if given.casefold() != term.parameter.casefold():
        return _deny(rule, f"use limited to {what} {term.parameter!r}, not {given!r}")
    return _ok(rule, f"{what} {given!r} is the one consented")


def _agreement(rule: str, agreed: bool | None, what: str) -> _Outcome:
    if agreed is None:
        return _abstain(rule, f"requires the requester to {what}; the purpose does not say")
    if not agreed:
        return _deny(rule, f"requires the requester to {what}; the requester declines")
    return _ok(rule, f"the requester agrees to {what}")


def _modifier(term: DuoTerm, purpose: ResearchPurpose, today: date) -> list[_Outcome]:
    code, value = term.shorthand, term.parameter
    if code == "NPUNCU":
        both = _modifier(parse_code("NPU"), purpose, today) + _modifier(parse_code("NCU"), purpose, today)
        return [_Outcome(o.decision, code, f"{code}: {o.reason}") for o in both]
    if code == "NPU":
        return [_ok(code, "the requester is not-for-profit") if purpose.not_for_profit
                else _deny(code, "not-for-profit use only and the requester is not declared not-for-profit")]
    if code == "NCU":
        return [_deny(code, "non-commercial use only and the use is commercial (or not declared otherwise)")
                if purpose.is_commercial else _ok(code, "the use is non-commercial")]
    if code == "NPOA":
        if purpose.primary == "POA" or purpose.population:
            return [_deny(code, "population, origins or ancestry research is prohibited")]
        return [_ok(code, "not population, origins or ancestry research")]
    if code == "NMDS":
        return [_deny(code, "methods development research is prohibited") if purpose.methods
                else _ok(code, "not methods development research")]
    if code == "GSO":
        if purpose.genetic is None:
            return [_abstain(code, "genetic studies only; the purpose does not say it is one")]
        return [_ok(code, "a genetic study") if purpose.genetic
                else _deny(code, "genetic studies only and the purpose is not one")]
    if code == "IRB":
        return [_ok(code, "the purpose has ethics approval") if purpose.irb_approved
                else _deny(code, "ethics (IRB/ERB) approval required and the purpose has none")]
    if code == "GS":
        assert value is not None
        if purpose.region is None:
            return [_abstain(code, f"use limited to region {value!r}; the purpose names no region")]
        if purpose.region.casefold() != value.casefold():
            return [_deny(code, f"use limited to region {value!r}, not {purpose.region!r}")]
        return [_ok(code, f"region {value!r} matches")]
    if code == "PUB":
        return [_agreement(code, purpose.publication, "publish the results")]
    if code == "RTN":
        return [_agreement(code, purpose.return_results, "return derived data to the resource")]
    if code == "COL":
        if value is None:
            return [_abstain(code, "collaboration with the study's investigators must be confirmed by a human")]
        if purpose.collaborator is None:
            return [_abstain(code, f"requires collaboration with {value!r}; the purpose does not say")]
        return [_named(code, term, purpose.collaborator, "collaborator")]
    if code == "US":
        return [_named(code, term, purpose.user, "user")]
    if code == "PS":
        return [_named(code, term, purpose.project, "project")]
    if code == "IS":
        return [_named(code, term, purpose.institution, "institution")]
    if code == "TS":
        assert value is not None
        if today > date.fromisoformat(value):
            return [_deny(code, f"use allowed until {value}, today is {today.isoformat()}")]
        return [_ok(code, f"use allowed until {value}")]
    if code == "MOR":
        assert value is not None
        if today < date.fromisoformat(value):
            return [_abstain(code, f"publication moratorium until {value}")]
        return [_ok(code, f"publication moratorium ended {value}")]
    if code == "RS":
        return [_abstain(code, "research-specific restriction" + (f" {value!r}" if value else "")
                         + " must be read by a human")]
    if code == "CC":
        return [_ok(code, "clinical care use extends use and restricts nothing")]
    return [_abstain(code, f"gdx has no rule for {term} ({term.label})")]


def _combine(outcomes: Sequence[_Outcome]) -> MatchResult:
    ordered = sorted(outcomes, key=lambda o: _RANK[o.decision])  # stable: rule order within a kind
    return MatchResult(ordered[0].decision, tuple(o.reason for o in ordered), ordered[0].rule)


def match(consent: Sequence[DuoTerm | str] | str, purpose: ResearchPurpose,
          ontology: DiseaseOntology | None = None, today: date | None = None) -> MatchResult:
    """Whether `consent` (DUO codes, e.g. a DataUseTerms duo list) allows `purpose`; see module doc."""
    if isinstance(today, datetime):
        today = today.date()
    today = today or datetime.now(UTC).date()
    items = consent.split() if isinstance(consent, str) else list(consent)
    terms: list[DuoTerm] = []
    invalid: list[str] = []
    for item in items:
        try:
            terms.append(parse_code(item))
        except InvalidDuoCode as exc:
            invalid.append(str(exc))
    if invalid:
        return MatchResult(Decision.DENY, tuple(f"invalid-code: {m} (default deny)" for m in invalid),
                           "invalid-code")
    if not terms:
        return MatchResult(Decision.DENY, ("default-deny: no consent terms, nothing is allowed",),
                           "default-deny")
    permissions = [t for t in terms if t.is_permission]
    if not permissions:
        return MatchResult(Decision.DENY, ("no-permission: the consent has modifiers but no data use "
                                           "permission (GRU, HMB, DS, POA, NRES): default deny",),
                           "no-permission")
    outcomes = _permission(permissions, purpose, ontology)
    if purpose.population:
        outcomes.append(_abstain("population", "DUOS leaves population research to a human"))
    if purpose.controls:
        outcomes.append(_abstain("controls", "DUOS leaves use as research controls to a human"))
    for term in terms:
        if not term.is_permission:
            outcomes.extend(_modifier(term, purpose, today))
    return _combine(outcomes)

