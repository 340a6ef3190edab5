"""Channel roles: map real PSG channel labels to the model's modalities (torch-free).

A role is a modality (contract.ROLES): EEG, EOG, EMG (chin), ECG, RESP (airflow, nasal
pressure, thermistor, thoracic/abdominal effort belts), SPO2. `role_of(label)` uses an alias
table tolerant to case, spacing, separators (`C4-M1`, `C4:M1`, `c4 m1`), `EEG`/`EOG` prefixes,
BCI2000 trailing dots (`C3..`) and accents (`Impédance`). Labels that are not signals a role
can use (impedance, temperature, event markers, pulse rate, position, light, activity,
accelerometers, leg/arm EMG, snoring, calibration and battery channels) map to None: leg EMG is
never taken for chin EMG.

Preference order of the primary channel per role (lower rank first, then file order):
    EEG   C4-M1 / C4-A1 / SHHS `EEG` (= C4-A1) > C3-M2 / C3-A2 / SHHS `EEG(sec)`, `EEG 2` >
          Fpz-Cz (Sleep-EDF) > C4 referential (C4, C4-Ref) > C3 / Cz referential > other derivations
          (F4-M1, O2-M1, Pz-Oz) > other 10-20 sites > anything else starting with `EEG`;
          a reference electrode alone (A1, M2, `EEG A1-Ref`) is not EEG
    EOG   left to mastoid (E1-M2, LOC, EOG(L), EOG horizontal) > bare E1 > right (E2-M1, ROC,
          EOG(R)) > bare E2 > other EOG
    EMG   chin bipolar (Chin1-Chin2, EMG Chin, EMG submental, SHHS `EMG`) > single chin >
          Nox chin derivations (1-2, 1-F, 2-F)
    ECG   ECG II / ECG / EKG / ECG1-ECG2 > other ECG leads
    RESP  airflow / thermistor (Airflow, Flow, Resp oro-nasal, AIRFLOW) > nasal pressure
          (Nasal Pressure, NEW AIR) > thoracic effort (Thorax, THOR RES, Chest) > abdominal
          effort (Abdomen, ABDO RES) > RIP derived (RIP Flow, RIP Sum)
    SPO2  SpO2 / SaO2 / Sat / Saturation > beat-to-beat SpO2
Overrides `ROLE=LABEL` always win (label matched case/space-insensitively).
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from sleepedge.contract import ROLES
from sleepedge.errors import ChannelError

__all__ = ["RoleMap", "assign_roles", "parse_overrides", "role_of", "role_rank"]


def _fold(label: str) -> str:
    """Lower-case ASCII, separators unified: 'EEG  C4:M1.' -> 'eeg c4-m1'."""
    text = unicodedata.normalize("NFKD", str(label))
    text = text.encode("ascii", "ignore").decode("ascii").casefold()
    text = text.replace("_", " ").replace(":", "-").replace("/", "-")
    text = re.sub(r"\.+$", "", text.strip())  # BCI2000 'C3..'
    text = re.sub(r"\s*-\s*", "-", text)
    return re.sub(r"\s+", " ", text).strip()


# Words that make a channel something no role uses, checked before any role pattern.
_EXCLUDE = re.compile(
    r"\b(imp|impedance|imped|ohm|temp|temperature|event|marker|pulse|pos|position|posangle|"
    r"light|lux|activity|axis|elevation|acc|accel|leg|legs|jambe|tib|tibialis|lat|rat|plm|limb|"
    r"arm|snore|snoring|sound|audio|mic|microphone|battery|voltage|bluetooth|rate|hr|cal|"
    r"ptt|pwa|pleth|phase|inductance|status|ergo|limitation|volume|co2|etco2|tcco2|ppg|"
    r"dc\d*|trigger|annotation|annotations|pressure cal|db)\b"
)

# a mastoid / ear reference electrode on its own is not an EEG derivation
_REFERENCE_ONLY = re.compile(r"^(eeg )?(a[12]|m[12]|m1m2|a1a2|m1-m2|a1-a2)(-(ref|avg|ave))?$")

_SITES = r"(fp[12z]|af[3478z]|f[1-8z]|fc[1-6z]|ft[78]|c[1-6z]|cp[1-6z]|t[3-9]|t10|tp[78]|p[1-8z]|po[3478z]|o[12z]|iz)"
_REF = r"(m[12]|a[12]|ref|cz|fz|oz|pz|fpz|avg|ave|le|re|m1m2|a1a2|cle|ler|lr)"  # MASS: CLE, LER

# (role, rank, pattern) evaluated in order on the folded label; the first match wins.
_RULES: list[tuple[str, int, re.Pattern[str]]] = [
    # --- SPO2
    ("SPO2", 0, re.compile(r"^(spo2|sao2|sp02|sa02|sat|osat|saturation|oxygen saturation|o2 sat|"
                           r"spo2 ?%|sao2 ?%|pulse ?ox(imetry)?)( ?\(?%\)?)?$")),
    ("SPO2", 1, re.compile(r"^(spo2|sao2)\b.*")),
    # --- ECG
    ("ECG", 0, re.compile(r"^(ecg|ekg)( ?(ii|2|lead ?ii|1-2|i-ii|ecg1-ecg2|ekg1-ekg2))?$")),
    ("ECG", 0, re.compile(r"^(ecg|ekg)1-(ecg|ekg)2$")),
    ("ECG", 1, re.compile(r"^(ecg|ekg)\b.*|^(ecg|ekg)\d.*|^ecg[lr]$")),
    # --- EMG (chin only; leg/arm were excluded above)
    ("EMG", 0, re.compile(r"^(emg )?chin ?1-chin ?2$|^(emg )?chin ?[12]-chin ?[123z]$|^(emg chin|chin emg|emg submental|"
                          r"submental( emg)?|emg sub|emg|emg1-emg2|emg 1-2|chin-emg|emg-chin)$")),
    ("EMG", 1, re.compile(r"^(emg )?chin( ?\d)?(-.*)?$|^(emg )?ment(al)?.*|^emg (chin|sub).*")),
    ("EMG", 2, re.compile(r"^[12]-[12f]$|^emg ?\d$")),  # Nox A1 chin electrodes 1, 2, F(ront); EMG1
    # --- EOG
    ("EOG", 0, re.compile(r"^(eog )?(e1|loc|l-eog|eogl|eog l|eog\(l\)|eog left|left eog)-(m[12]|a[12]|ref|fpz)$|"
                          r"^(eog )?(loc|l-eog|eogl|eog l|eog\(l\)|eog left|left eog|eog horizontal|heog|eog h)$")),
    ("EOG", 0, re.compile(r"^eog ?\(?l\)?(-.*)?$|^eog horizontal.*|^eog-l$|^leog$|^eog left.*")),
    ("EOG", 1, re.compile(r"^(eog )?e1$")),
    ("EOG", 2, re.compile(r"^(eog )?(e2|roc|r-eog|eogr|eog r|eog\(r\)|eog right|right eog)-(m[12]|a[12]|ref|fpz)$|"
                          r"^(eog )?(roc|r-eog|eogr|eog r|eog\(r\)|eog right|right eog|veog|eog v)$")),
    ("EOG", 2, re.compile(r"^eog ?\(?r\)?(-.*)?$|^eog-r$|^reog$|^eog right.*")),
    ("EOG", 3, re.compile(r"^(eog )?e2$")),
    ("EOG", 4, re.compile(r"^eog\b.*|^eog\d.*|^(e[12]|loc|roc)-.*")),
    # --- RESP
    ("RESP", 0, re.compile(r"^(airflow|air flow|flow|resp oro-nasal|oro-nasal|oronasal|nasal-oral|oral-nasal|"
                           r"thermistor|therm|resp airflow|resp flow|flow patient|nasal therm|oral therm|"
                           r"resp therm|airflow therm|aux ?ac|flw)( .*)?$")),
    ("RESP", 1, re.compile(r"^(new air|nasal pressure|nasal press|nasal|pressure|cannula|nasal cannula|pflow|"
                           r"pres|resp nasal|nasal flow|ptaf|cflow)( .*)?$")),
    ("RESP", 2, re.compile(r"^(thor|thorax|thoracic|thor res|chest|resp chest|effort tho|effort thor|"
                           r"rip thora?x?|rip thor|resp thorax|thoracic effort|resp thoracic|thor effort|resp belt thor)( .*)?$")),
    ("RESP", 3, re.compile(r"^(abdo|abd|abdomen|abdominal|abdo res|resp abdomen|effort abd|rip abdom|rip abdomen|"
                           r"rip abd|abdominal effort|resp abdominal|abdo effort|resp belt abd|resp belt abdo)( .*)?$")),
    ("RESP", 4, re.compile(r"^(rip flow|rip sum|rip|resp|respiration|resp effort|sum)( .*)?$")),
    # --- EEG
    ("EEG", 0, re.compile(r"^(eeg ?)?c4-?(m1|a1)$|^eeg$")),  # SHHS 'EEG' is C4-A1
    ("EEG", 1, re.compile(r"^(eeg ?)?c3-?(m2|a2)$|^eeg ?\(sec\)$|^eeg ?2$|^eeg sec$")),  # SHHS 'EEG(sec)' is C3-A2
    ("EEG", 2, re.compile(r"^(eeg )?fpz-cz$")),
    ("EEG", 3, re.compile(r"^(eeg )?c4(-" + _REF + r")?$")),
    ("EEG", 4, re.compile(r"^(eeg )?c[3z](-" + _REF + r")?$")),
    ("EEG", 5, re.compile(r"^(eeg )?" + _SITES + r"-(" + _REF + r"|" + _SITES + r")$")),
    ("EEG", 6, re.compile(r"^(eeg )?" + _SITES + r"$")),
    ("EEG", 7, re.compile(r"^eeg\b.*|^eeg ?\d+$")),  # MESA EEG1..EEG3: derivation unknown here
]


def role_rank(label: str) -> tuple[str, int] | None:
    """(role, preference rank) of a label, lower rank preferred; None when no role applies."""
    folded = _fold(label)
    if not folded:
        return None
    if _EXCLUDE.search(folded) or _REFERENCE_ONLY.match(folded):
        return None
    for role, rank, pattern in _RULES:
        if pattern.match(folded):
            return role, rank
    return None


def role_of(label: str) -> str | None:
    """The role (EEG, EOG, EMG, ECG, RESP, SPO2) of a channel label, or None."""
    hit = role_rank(label)
    return None if hit is None else hit[0]


def _key(label: str) -> str:
    return "".join(str(label).split()).casefold()


def parse_overrides(items: Sequence[str] | None) -> dict[str, str]:
    """["EEG=C4-M1", "emg = Chin1-Chin2"] -> {"EEG": "C4-M1", "EMG": "Chin1-Chin2"}."""
    out: dict[str, str] = {}
    for item in items or ():
        role, sep, label = str(item).partition("=")
        role, label = role.strip().upper(), label.strip()
        if not sep or not role or not label:
            raise ChannelError(
                f"channel override {item!r}: expected ROLE=LABEL (e.g. EEG=C4-M1) with ROLE one "
                f"of {', '.join(ROLES)}"
            )
        if role not in ROLES:
            close = difflib.get_close_matches(role, ROLES, n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ChannelError(
                f"channel override {item!r}: unknown role {role!r}, expected one of "
                f"{', '.join(ROLES)}{hint}"
            )
        if role in out and _key(out[role]) != _key(label):
            raise ChannelError(
                f"channel override {item!r}: role {role} already set to {out[role]!r}; give one "
                "label per role"
            )
        out[role] = label
    return out


@dataclass
class RoleMap:
    primary: dict[str, str]  # role -> the one label used as the model input for that role
    candidates: dict[str, list[str]]  # role -> every label that maps to it (preference order)
    unassigned: list[str]  # labels with no role
    missing: list[str]  # roles with no channel
    overridden: dict[str, str] = field(default_factory=dict)  # role -> label set by the user

    def describe(self) -> str:
        lines = []
        for role, label in self.primary.items():
            others = [c for c in self.candidates.get(role, []) if c != label]
            how = " (override)" if role in self.overridden else ""
            alt = f"; also {', '.join(others)}" if others else ""
            lines.append(f"{role:<5} {label}{how}{alt}")
        for role in self.missing:
            lines.append(f"{role:<5} MISSING (no channel; the model gets presence 0 for it)")
        if self.unassigned:
            lines.append(f"no role: {', '.join(self.unassigned)}")
        return "\n".join(lines)


NO_CHANNEL = "none"   # `--channel EOG=none`: score without that role (it counts as missing)


def assign_roles(labels: Sequence[str], overrides: Mapping[str, str] | None = None,
                 roles: Sequence[str] = ROLES) -> RoleMap:
    """Pick one primary label per role from `labels` (alias table + preference + overrides).

    Overrides map role -> label (see `parse_overrides`); a label named by an override is used
    for that role only; the label `none` leaves the role out (missing, as if not recorded). An override naming a label that is not in `labels` raises ChannelError
    listing the labels present and the closest one.
    """
    labels = [str(x) for x in labels]
    unknown_roles = [r for r in roles if r not in ROLES]
    if unknown_roles:
        raise ChannelError(f"roles {unknown_roles} unknown; expected a subset of {', '.join(ROLES)}")
    by_key: dict[str, str] = {}
    for lab in labels:
        by_key.setdefault(_key(lab), lab)
    chosen: dict[str, str] = {}
    excluded: set[str] = set()
    for role, wanted in (overrides or {}).items():
        role_u = str(role).strip().upper()
        if role_u not in ROLES:
            raise ChannelError(f"channel override for unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if _key(wanted) == _key(NO_CHANNEL):     # ROLE=none: leave the role out (a known-bad channel)
            excluded.add(role_u)
            continue
        hit = by_key.get(_key(wanted))
        if hit is None:
            close = difflib.get_close_matches(wanted, labels, n=1, cutoff=0.4)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ChannelError(
                f"channel override {role_u}={wanted!r}: no such channel; labels present: "
                f"{', '.join(labels) or '(none)'}{hint}"
            )
        if role_u in roles:
            chosen[role_u] = hit
    used = set(chosen.values())
    ranked: dict[str, list[tuple[int, int, str]]] = {r: [] for r in roles}
    unassigned: list[str] = []
    for pos, lab in enumerate(labels):
        if lab in used:
            continue
        hit = role_rank(lab)
        if hit is None or hit[0] not in ranked:
            unassigned.append(lab)
            continue
        ranked[hit[0]].append((hit[1], pos, lab))
    candidates: dict[str, list[str]] = {}
    primary: dict[str, str] = {}
    for role in roles:
        ordered = [lab for _, _, lab in sorted(ranked[role])]
        if role in chosen:
            ordered = [chosen[role]] + ordered
        candidates[role] = ordered
        if ordered and role not in excluded:
            primary[role] = ordered[0]
    missing = [r for r in roles if r not in primary]
    return RoleMap(primary=primary, candidates=candidates, unassigned=unassigned, missing=missing,
                   overridden={r: chosen[r] for r in roles if r in chosen})
