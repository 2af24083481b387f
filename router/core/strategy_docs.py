"""The strategy's reference, generated from its types: a JSON Schema for editors and a
Markdown table of every field (type, unit, default, constraint, what it is).

Both are checked in (``configs/strategy.schema.json``, ``configs/STRATEGY_REFERENCE.md``) and a
test keeps them in sync with the code; ``referral-router schema strategy`` prints the schema.
A field's sentence is its ``#:`` comment in the source (else the struct's own docstring
says what the struct holds).
"""

from __future__ import annotations

import ast
import inspect
import json
from typing import Any

import msgspec

from router.core import config, messages
from router.core.config import Strategy

#: Type aliases whose unit a reader needs to know.
_UNITS = {
    "Money": "minor units (fen)",
    "Rate": "annual fraction",
    "Probability": "probability",
    "Count": "count",
}


#: One sentence per field that has no ``#:`` comment in the source.
_SENTENCES: dict[str, str] = {
    "Strategy.version": "Name of this strategy version; part of every decision id.",
    "Strategy.timezone": "IANA zone of the funder's own budgets' calendar windows.",
    "Strategy.economics": "Funding cost, loss and margin assumptions of the coverage test.",
    "Strategy.rules": "Hard rules: global declines and what removes keep and branch.",
    "Strategy.scorers": "Named risk models; policies refer to them by name.",
    "Strategy.primary": "The funder's own book (outcome `keep`).",
    "Strategy.branch": "The second policy branch (outcome `branch`); none when absent.",
    "Strategy.routing": "How one partner is chosen among the eligible ones.",
    "Strategy.channels": "Per-channel consent and referral settings, by channel name.",
    "Strategy.partners": "The partner book (inline, or in the file `partner_book` names).",
    "Strategy.identity": "Where the secret key for hashing identifiers comes from.",
    "Strategy.degraded": "What to answer while the quota store is unreachable.",
    "Strategy.billing": "Statement periods: when a month closes.",
    "Strategy.idempotency_ttl_hours": "How long a decision is replayed for a retry.",
    "Strategy.partner_book": "TOML file holding `[[partners]]`, relative to this file.",
    "Strategy.base_dir": "Directory relative paths are read from (set by the loader).",
    "Economics.funding_cost": "The funder's cost of funds.",
    "Economics.lgd": "Loss given default, as a share of the exposure.",
    "Economics.operating_cost": "Servicing and acquisition cost per balance-year.",
    "Economics.target_margin": "Margin a kept loan must earn on top of its costs.",
    "Economics.legal_apr_cap": "Legal all-in APR ceiling.",
    "Economics.own_apr_cap": "The funder's own APR ceiling (at most the legal cap).",
    "Economics.min_apr": "Lowest APR the funder prices at.",
    "Economics.ead_factor": "Average share of the amount outstanding over the term.",
    "Rules.min_age": "Younger applicants are declined.",
    "Rules.max_age": "Older applicants are declined.",
    "Rules.decline_fraud": "Decline applications flagged as fraud.",
    "Rules.licensed_regions": "Region-code prefixes where the funder may lend (empty: all).",
    "Rules.max_worst_dpd": "Worst days past due in 12 months above this: no keep or branch.",
    "Rules.max_inquiries_3m": "Credit inquiries in 3 months above this: no keep or branch.",
    "Rules.max_open_loans": "Open loans above this: no keep or branch.",
    "Rules.max_dti": "Debt-to-income above this: no keep or branch.",
    "ScorerRef.kind": "A registered scorer kind (`logistic_json`, `sklearn`, …).",
    "ScorerRef.path": "The model file, relative to the strategy file.",
    "Primary.scorer": "Name of the scorer in `[scorers]`.",
    "Primary.max_pd": "Highest probability of default the funder keeps.",
    "Primary.min_expected_profit": "Lowest expected profit of a kept loan.",
    "Primary.filters": "Eligibility bounds for keeping.",
    "Primary.caps": "The funder's own budgets per window.",
    "Filters.min_age": "Lowest age accepted.",
    "Filters.max_age": "Highest age accepted.",
    "Filters.max_pd": "Highest probability of default accepted.",
    "Filters.min_score": "Lowest bureau score accepted.",
    "Filters.max_score": "Highest bureau score accepted.",
    "Filters.min_amount": "Smallest requested amount accepted.",
    "Filters.max_amount": "Largest requested amount accepted.",
    "Filters.min_term": "Shortest term accepted, in months.",
    "Filters.max_term": "Longest term accepted, in months.",
    "Filters.max_inquiries_3m": "Most credit inquiries in 3 months accepted.",
    "Filters.max_open_loans": "Most open loans accepted.",
    "Filters.max_dti": "Highest debt-to-income accepted.",
    "Filters.max_worst_dpd": "Highest worst days past due in 12 months accepted.",
    "Filters.regions": "Region-code prefixes accepted (empty: all).",
    "Filters.channels": "Channels accepted (empty: all).",
    "Cap.window": "Calendar window, in the owner's time zone, by event time.",
    "Cap.count": "Most grants in one window (none: no count cap).",
    "Cap.amount": "Most requested amount granted in one window (none: no amount cap).",
    "BranchPolicy.scorer": "Name of the branch's scorer in `[scorers]`.",
    "BranchPolicy.max_pd": "Highest probability of default the branch takes.",
    "BranchPolicy.apr_cap": "The branch product's APR ceiling.",
    "BranchPolicy.reserve_rate": "The partner's first-loss reserve, as a share of the amount.",
    "BranchPolicy.funder_loss_share": "The funder's share of losses beyond the reserve.",
    "BranchPolicy.return_model": "`fixed`: a fixed return on the balance; `share`: of interest.",
    "BranchPolicy.fixed_return": "The funder's fixed annual return on the balance.",
    "BranchPolicy.profit_share": "The funder's share of the interest income.",
    "BranchPolicy.funding_cost": "The branch's funding cost (none: the economics').",
    "BranchPolicy.operating_cost": "The branch's operating cost per balance-year.",
    "BranchPolicy.target_margin": "Margin the branch must earn on top of its costs.",
    "BranchPolicy.min_expected_profit": "Lowest expected profit of a branch loan.",
    "BranchPolicy.filters": "Eligibility bounds for the branch.",
    "BranchPolicy.caps": "The branch's budgets per window.",
    "Routing.method": "A registered routing method: `waterfall`, `best_value`, `weighted`.",
    "Routing.min_expected_value": "Partners worth less than this for an application are skipped.",
    "ChannelPolicy.consent_partners": "The partners consent `any` means on this channel.",
    "ChannelPolicy.referral_allowed": "Whether this channel's traffic may be referred at all.",
    "Partner.id": "The partner's id in decisions, the ledger and bills.",
    "Partner.name": "Display name.",
    "Partner.kind": "What kind of lender (bank, platform, …); informational.",
    "Partner.whitelisted": "Only whitelisted partners are ever referred to.",
    "Partner.timezone": "IANA zone of this partner's caps and statements.",
    "Partner.priority": "Waterfall order (lower first); also breaks ties.",
    "Partner.weight": "Share in weighted rotation.",
    "Partner.dedupe_days": "Days an applicant is not sent to this partner again.",
    "Partner.apr_min": "Lowest APR this partner lends at.",
    "Partner.apr_max": "Highest APR this partner lends at.",
    "Partner.acceptance": "Expected share of referrals the partner accepts.",
    "Partner.acceptance_pd_slope": "How fast acceptance falls with the applicant's PD.",
    "Partner.funded_rate": "Expected share of accepted referrals that fund.",
    "Partner.terms": "Fees and revenue share, snapshotted on every referral.",
    "Partner.returns": "Which lead returns the partner may make.",
    "Partner.filters": "The partner's eligibility bounds.",
    "Partner.caps": "The partner's quotas per window.",
    "Partner.employer_names": "The partner's own staff are never referred to it (hashed).",
    "CommercialTerms.fee_per_referral": "Fee per referral posted.",
    "CommercialTerms.fee_per_accepted": "Fee per referral the partner accepts.",
    "CommercialTerms.fee_per_funded": "Fee per referral the partner funds.",
    "CommercialTerms.rev_share": "Share of the interest the partner collects.",
    "ReturnsPolicy.window_days": "Days after the referral a return is accepted.",
    "ReturnsPolicy.max_rate": "Most returns per period, as a share of its referrals.",
    "ReturnsPolicy.reasons": "Reason codes a return may give.",
    "ReturnsPolicy.auto_approve": "Approve returns at once (else hold them for review).",
    "Identity.key_env": "Environment variable holding the secret hashing key.",
    "Identity.dev_key": "Public fallback key for demos; refused for shared stores.",
    "DegradedPolicy.policy": "`decline` everything, or `keep` what the primary policy accepts.",
    "BillingPolicy.grace_days": "Days after a month ends before its statement closes.",
}


def strategy_schema() -> dict[str, Any]:
    """The strategy's JSON Schema (draft 2020-12, from msgspec)."""
    schema = msgspec.json.schema(Strategy)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "referral-router strategy"
    return schema


def schema_text() -> str:
    """The schema as the checked-in file holds it."""
    return json.dumps(strategy_schema(), indent=2, sort_keys=True) + "\n"


def _field_notes() -> dict[tuple[str, str], tuple[str, str]]:
    """(struct, field) -> (its ``#:`` comment, the annotation's source text)."""
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for module in (config, messages):
        src = inspect.getsource(module)
        lines = src.splitlines()
        for node in ast.walk(ast.parse(src)):
            if not isinstance(node, ast.ClassDef):
                continue
            for item in node.body:
                if not isinstance(item, ast.AnnAssign) or not isinstance(item.target, ast.Name):
                    continue
                notes: list[str] = []
                k = item.lineno - 2
                while k >= 0 and lines[k].strip().startswith("#:"):
                    notes.insert(0, lines[k].strip()[2:].strip())
                    k -= 1
                out[(node.name, item.target.id)] = (
                    " ".join(notes),
                    ast.get_source_segment(src, item.annotation) or "",
                )
    return out


def _type(prop: dict[str, Any]) -> tuple[str, str]:
    """(type, constraint) of a schema property, in words."""
    options = prop.get("anyOf", [prop])
    types, limits = [], []
    for o in options:
        if "$ref" in o:
            types.append(o["$ref"].rsplit("/", 1)[-1])
        elif "enum" in o:
            types.append(" | ".join(json.dumps(v) for v in o["enum"]))
        elif o.get("type") == "array":
            inner = _type(o.get("items", {}))[0]
            types.append(f"list of {inner}")
        elif o.get("type") == "object":
            inner = _type(o.get("additionalProperties", {}))[0]
            types.append(f"table of {inner}")
        elif "type" in o:
            types.append(o["type"])
        for key, word in (
            ("minimum", "≥"),
            ("exclusiveMinimum", ">"),
            ("maximum", "≤"),
            ("exclusiveMaximum", "<"),
            ("minLength", "length ≥"),
            ("maxLength", "length ≤"),
        ):
            if key in o:
                limits.append(
                    f"{word} {o[key]:,}" if isinstance(o[key], int) else f"{word} {o[key]}"
                )
        if "pattern" in o:
            limits.append(f"matches `{o['pattern']}`")
    return " or ".join(types) or "any", ", ".join(limits)


def reference_text() -> str:
    """The Markdown reference of every strategy field."""
    schema = msgspec.json.schema(Strategy)
    notes = _field_notes()
    out = [
        "# Strategy reference",
        "",
        "Generated from the strategy's types by `router/core/strategy_docs.py` (a test keeps it",
        "in sync; do not edit by hand). Editors can validate a strategy against",
        "`configs/strategy.schema.json` (`referral-router schema strategy` prints it). Unknown",
        "keys are an error; a field without a default is required.",
        "",
    ]
    for name, d in schema["$defs"].items():
        out += [f"## `{name}`", "", d.get("description", "").strip(), ""]
        out += ["| field | type | unit | default | constraint | what it is |"]
        out += ["| --- | --- | --- | --- | --- | --- |"]
        required = set(d.get("required", []))
        for field, prop in d.get("properties", {}).items():
            typ, limit = _type(prop)
            note, annotation = notes.get((name, field), ("", ""))
            note = note or _SENTENCES.get(f"{name}.{field}", "")
            unit = next((u for alias, u in _UNITS.items() if alias in annotation), "")
            default = "required" if field in required else f"`{json.dumps(prop.get('default'))}`"
            cells = [f"`{field}`", typ, unit, default, limit, note]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
