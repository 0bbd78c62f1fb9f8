"""Maps an event to the SOC2 controls it evidences (seed, Steps 1 and 3)."""

from __future__ import annotations

CONTROL_ORDER = ("CC6.1", "CC6.6", "CC7.2", "CC8.1")
ALL_CONTROLS = frozenset(CONTROL_ORDER)


def _ordered(controls: set[str]) -> list[str]:
    return [c for c in CONTROL_ORDER if c in controls]


def controls_for_change(production_class: bool, approver: str | None) -> list[str]:
    """CC6.1 (identity) and CC6.6 (role enforcement) always; CC8.1 for an approved change
    in a class with the production rules (every spelling of production, by the policy)."""
    controls = {"CC6.1", "CC6.6"}
    if approver and production_class:
        controls.add("CC8.1")
    return _ordered(controls)


def controls_for_rejection(
    production_class: bool, approver: str | None, violated: str
) -> list[str]:
    """A blocked write evidences the control it enforced, plus CC7.2 monitoring."""
    return _ordered({*controls_for_change(production_class, approver), violated, "CC7.2"})


def controls_for_meta() -> list[str]:
    """Rotations and documented gaps are monitoring evidence about the trail itself."""
    return _ordered({"CC7.2", "CC8.1"})


def parse_controls(text: str) -> list[str]:
    """``CC6.1,CC8.1`` → validated list; unknown names are a clear error."""
    wanted = [c.strip().upper() for c in text.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in ALL_CONTROLS]
    if unknown or not wanted:
        raise ValueError(
            f"unknown SOC2 control(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(CONTROL_ORDER)}"
        )
    return _ordered(set(wanted))
