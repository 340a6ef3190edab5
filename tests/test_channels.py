"""Channel roles: alias table, exclusions, preference order, overrides."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from sleepedge.channels import assign_roles, parse_overrides, role_of, role_rank
from sleepedge.contract import ROLES
from sleepedge.errors import ChannelError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

EXPECTED = {
    # Sleep-EDF
    "EEG Fpz-Cz": "EEG", "EEG Pz-Oz": "EEG", "EOG horizontal": "EOG", "EMG submental": "EMG",
    "Resp oro-nasal": "RESP",
    # SHHS
    "EEG": "EEG", "EEG(sec)": "EEG", "EEG 2": "EEG", "EOG(L)": "EOG", "EOG(R)": "EOG", "EMG": "EMG",
    "ECG": "ECG", "NEW AIR": "RESP", "AIRFLOW": "RESP", "THOR RES": "RESP", "ABDO RES": "RESP",
    "SaO2": "SPO2",
    # MASS / ISRUC / Nox / Compumedics
    "C4-M1": "EEG", "C3-A2": "EEG", "F4-M1": "EEG", "O2-M1": "EEG", "E1-M2": "EOG", "E2-M1": "EOG",
    "LOC": "EOG", "ROC": "EOG", "Chin": "EMG", "Chin1-Chin2": "EMG", "EMG Chin": "EMG", "Chin EMG": "EMG",
    "ECG II": "ECG", "EKG": "ECG", "Flow": "RESP", "Nasal Pressure": "RESP", "Thorax": "RESP",
    "Abdomen": "RESP", "SpO2": "SPO2", "Sat": "SPO2",
    # spelling variants
    "c4:m1": "EEG", "  C3 - M2 ": "EEG", "EEG C4-A1": "EEG", "C3..": "EEG", "eog  left": "EOG",
    "Saturation": "SPO2", "Airflow": "RESP", "Chest": "RESP",
    # MASS / MESA / ISRUC spellings
    "EEG C4-CLE": "EEG", "EEG1": "EEG", "EEG3": "EEG", "EOG Left Horiz": "EOG", "EOG-R": "EOG", "LOC-A2": "EOG",
    "EMG Chin1": "EMG", "ECG ECGI": "ECG", "Resp Belt Thor": "RESP", "Resp Belt Abdo": "RESP", "Pres": "RESP",
    "SaO2 SaO2": "SPO2", "EMG1": "EMG",
}
NOT_A_ROLE = [
    "Event marker", "Temp rectal", "C3 Impédance", "C3 Imp\xe9dance", "C4-M1 (Imp)", "Pulse", "Position",
    "Light", "Activity", "Left Leg", "Right Leg", "LAT", "RAT", "Leg 1", "EMG Leg", "EMG Tib L", "Jambe droite Imp",
    "Heart Rate", "Resp Rate", "Snoring", "X Axis", "PosAngle", "Pulse Waveform", "Abdomen CaL", "RIP Flow Cal",
    "Voltage (battery", "M1", "A2", "EEG A1-Ref", "Flow Limitation", "", "   ", "Pleth", "HR", "Snore", "Pos",
]


@pytest.mark.parametrize("label,role", sorted(EXPECTED.items()))
def test_alias_table(label, role):
    assert role_of(label) == role


@pytest.mark.parametrize("label", NOT_A_ROLE)
def test_non_signal_channels_have_no_role(label):
    assert role_of(label) is None


def test_preference_order():
    m = assign_roles(["EEG Pz-Oz", "EEG Fpz-Cz", "O2-M1", "C3-M2", "C4-M1", "E2-M1", "E1-M2",
                      "ABDO RES", "THOR RES", "Nasal Pressure", "AIRFLOW", "SpO2 B-B", "SpO2"])
    assert m.primary == {"EEG": "C4-M1", "EOG": "E1-M2", "RESP": "AIRFLOW", "SPO2": "SpO2"}
    assert m.candidates["EEG"] == ["C4-M1", "C3-M2", "EEG Fpz-Cz", "EEG Pz-Oz", "O2-M1"]
    assert m.candidates["RESP"] == ["AIRFLOW", "Nasal Pressure", "THOR RES", "ABDO RES"]
    assert m.missing == ["EMG", "ECG"]
    assert m.unassigned == []
    # Sleep-EDF: Fpz-Cz before Pz-Oz; SHHS: EEG (C4-A1) before EEG(sec)
    assert assign_roles(["EEG Pz-Oz", "EEG Fpz-Cz"]).primary["EEG"] == "EEG Fpz-Cz"
    assert assign_roles(["EEG(sec)", "EEG"]).primary["EEG"] == "EEG"
    assert role_rank("C4-M1")[1] < role_rank("C3-M2")[1] < role_rank("EEG Fpz-Cz")[1] < role_rank("Pz-Oz")[1]


def test_leg_emg_is_never_chin_emg():
    m = assign_roles(["Left Leg", "Right Leg", "EMG Leg", "LAT", "RAT"])
    assert "EMG" in m.missing and m.candidates["EMG"] == []
    assert sorted(m.unassigned) == sorted(["Left Leg", "Right Leg", "EMG Leg", "LAT", "RAT"])


def test_overrides_win_and_are_reported():
    labels = ["C4-M1", "C3-M2", "E1-M2", "Chin1-Chin2", "Temp rectal"]
    m = assign_roles(labels, parse_overrides(["eeg = c3 - m2 ", "EMG=chin1-chin2"]))
    assert m.primary["EEG"] == "C3-M2" and m.candidates["EEG"] == ["C3-M2", "C4-M1"]
    assert m.overridden == {"EEG": "C3-M2", "EMG": "Chin1-Chin2"}
    assert "override" in m.describe()
    # a label no alias knows can be given a role by override; it then leaves `unassigned`
    m = assign_roles(labels, {"ECG": "Temp rectal"})
    assert m.primary["ECG"] == "Temp rectal" and "Temp rectal" not in m.unassigned
    # overriding a label into another role removes it from its alias role
    m = assign_roles(["C4-M1", "E1-M2"], {"EOG": "C4-M1"})
    assert m.primary["EOG"] == "C4-M1" and "EEG" in m.missing and m.candidates["EOG"] == ["C4-M1", "E1-M2"]


def test_override_naming_absent_label():
    with pytest.raises(ChannelError) as ei:
        assign_roles(["EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal"], {"EEG": "EEG Fpz-Cx"})
    msg = str(ei.value)
    assert "labels present: EEG Fpz-Cz, EEG Pz-Oz, EOG horizontal" in msg
    assert "did you mean 'EEG Fpz-Cz'" in msg and "\n" not in msg


@pytest.mark.parametrize("item,match", [("EEG", "expected ROLE=LABEL"), ("=C4", "expected ROLE=LABEL"),
                                        ("EEG=", "expected ROLE=LABEL"), ("EGG=C4-M1", "did you mean EOG or E[EM]G"),
                                        ("BRAIN=C4", "unknown role")])
def test_parse_overrides_errors(item, match):
    with pytest.raises(ChannelError, match=match):
        parse_overrides([item])


def test_parse_overrides_conflict_and_ok():
    assert parse_overrides(["spo2=SaO2", "Resp=Flow"]) == {"SPO2": "SaO2", "RESP": "Flow"}
    with pytest.raises(ChannelError, match="already set"):
        parse_overrides(["EEG=C4-M1", "EEG=C3-M2"])


def test_subset_of_roles_and_describe_lists_missing():
    m = assign_roles(["C4-M1", "ECG"], roles=("EEG", "EOG", "EMG", "ECG"))
    assert set(m.candidates) == {"EEG", "EOG", "EMG", "ECG"}
    text = m.describe()
    assert "EOG   MISSING" in text and "EMG   MISSING" in text and "C4-M1" in text
    with pytest.raises(ChannelError, match="unknown"):
        assign_roles(["C4-M1"], roles=("EEG", "BRAINWAVE"))


def _labels(rel):
    from sleepedge.edf import EDFQuirkWarning, open_edf

    path = DATA / rel
    if not path.exists():
        pytest.skip(f"{rel} not available")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EDFQuirkWarning)
        with open_edf(path) as r:
            return r.header.labels


def test_nox_a1_real_labels():
    labels = _labels("nox-a1-psg-rsleep/subject1.edf")
    m = assign_roles(labels)
    assert m.primary == {"EEG": "C4-M1", "EOG": "E1-M2", "EMG": "1-2", "ECG": "ECG",
                         "RESP": "Airflow", "SPO2": "Saturation"}
    assert m.missing == []
    assert m.candidates["EEG"][:2] == ["C4-M1", "C3-M2"]
    assert m.candidates["RESP"] == ["Airflow", "Nasal Pressure", "Chest", "Abdomen", "RIP Flow", "RIP Sum"]
    for lab in ("C3 Impédance", "Left Leg", "Right Leg", "Pulse", "Light", "Activity", "PosAngle", "M1", "Snoring"):
        assert lab in m.unassigned
    assert len(m.unassigned) + sum(len(c) for c in m.candidates.values()) == len(labels)  # nothing dropped


def test_sleep_edf_and_mne_real_labels():
    m = assign_roles(_labels("sleep-edf/short_psg.edf"))
    assert m.primary == {"EEG": "EEG Fpz-Cz", "EOG": "EOG horizontal", "EMG": "EMG submental",
                         "RESP": "Resp oro-nasal"}
    assert m.unassigned == ["Temp rectal", "Event marker"]
    m = assign_roles(_labels("mne-edf-variants/MB0400FU.EDF"))
    assert m.primary == {"EEG": "EEG C4-Ref"}
    assert "EEG A1-Ref" in m.unassigned and "POL E" in m.unassigned
    m = assign_roles(_labels("mne-edf-variants/chtypes_edf.edf"))
    assert m.primary["ECG"] == "ECG ECG1" and m.primary["EEG"] == "EEG C4-Ref"


def test_roles_constant_covered():
    assert set(assign_roles([]).missing) == set(ROLES)


def test_override_none_leaves_the_role_out():
    labels = ["EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal"]
    rm = assign_roles(labels, parse_overrides(["EOG=none"]))
    assert rm.primary == {"EEG": "EEG Fpz-Cz"} and "EOG" in rm.missing
    rm = assign_roles(labels, parse_overrides(["eog = None", "EEG=EEG Pz-Oz"]))
    assert rm.primary == {"EEG": "EEG Pz-Oz"}
