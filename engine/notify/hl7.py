"""The ``hl7`` notification kind: an HL7 v2.5 ORU^R01 per event, over MLLP, built and parsed with hl7apy.

The message: MSH (the configured applications and facilities, a control id
stable across retries), PID (patient id and name from the stored header), OBR
(the model as the universal service id, the accession number as filler order
number, result status F, or X for a failed job), then OBX segments: the
findings summary, the number of findings, one per finding, the Study Instance
UID and one per result object (its SOP Instance UID, with the series and SOP
class in the observation sub-id). Codes are local (coding system ``99SSTREAM``).

ACK codes decide: AA/CA sent; AE/CE (application error) retried; AR/CR
(rejected) failed at once; no or an unreadable ACK retried.
"""

from __future__ import annotations

import contextlib

import hashlib
import time
from typing import Any, Mapping

from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from engine.config.entries import NotificationConfig
from engine.notify.mllp import MllpError, exchange
from engine.notify.registry import SendOutcome, StudyFacts

HL7_VERSION = "2.5"
CODING_SYSTEM = "99SSTREAM"
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


def escape(text: str) -> str:
    """``text`` with HL7's delimiters escaped, and segment breaks replaced by spaces (one field's value)."""
    for plain, escaped in _ESCAPES:
        text = text.replace(plain, escaped)
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


def control_id(event_id: str, target: str) -> str:
    """MSH-10: 20 characters derived from the event and target, the same on every retry."""
    return hashlib.sha256(f"{target}\0{event_id}".encode()).hexdigest()[:20]


def _finding_text(finding: Mapping[str, Any]) -> str:
    parts = [str(finding.get("label", "finding"))]
    if finding.get("volume_ml") is not None:
        parts.append(f"{float(finding['volume_ml']):.2f} ml")
    if finding.get("probability") is not None:
        parts.append(f"p={float(finding['probability']):.3f}")
    if finding.get("centroid_mm"):
        parts.append("at (" + ", ".join(f"{float(v):.0f}" for v in finding["centroid_mm"]) + ") mm")
    return " ".join(parts)


def build_oru(event: Mapping[str, Any], facts: StudyFacts, config: NotificationConfig) -> Message:
    """The ORU^R01 of one event (see the module docstring)."""
    message = Message("ORU_R01", version=HL7_VERSION)
    msh = message.msh
    msh.msh_3 = escape(config.sending_application)
    msh.msh_4 = escape(config.sending_facility)
    msh.msh_5 = escape(config.receiving_application)
    msh.msh_6 = escape(config.receiving_facility)
    msh.msh_7 = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = control_id(str(event["event_id"]), config.name)
    msh.msh_11 = "P"
    result = message.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    pid.pid_3 = escape(facts.patient_id)
    pid.pid_5 = escape(facts.patient_name).replace(" ", "^", 1) if facts.patient_name else ""
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    job = event.get("job") or {}
    service = escape(str(job.get("model") or "study"))
    status = "X" if event.get("trigger") == "failed" else "F"
    order.obr.obr_1 = "1"
    order.obr.obr_3 = escape(facts.accession_number)
    order.obr.obr_4 = f"{service}^{service} {escape(str(job.get('model_version', '')))}".strip() + f"^{CODING_SYSTEM}"
    order.obr.obr_25 = status

    observations: list[tuple[str, str, str, str, str]] = [
        ("ST", "SUMMARY", "Findings summary", "", str(event.get("summary", "")) or str(event.get("trigger", ""))),
        ("NM", "FINDINGS", "Number of findings", "", str(int(event.get("findings_count", 0)))),
    ]
    if event.get("reason"):
        observations.append(("ST", "REASON", "Failure reason", "", str(event["reason"])[:500]))
    for number, finding in enumerate(event.get("findings") or [], 1):
        observations.append(("ST", "FINDING", "Finding", str(number), _finding_text(finding)))
    observations.append(("ST", "STUDY_UID", "Study Instance UID", "", str(event.get("study_instance_uid", ""))))
    for number, obj in enumerate(event.get("results") or [], 1):
        observations.append(("ST", "RESULT_UID", "Result SOP Instance UID", str(number), obj["sop_instance_uid"]))
        observations.append(("ST", "RESULT_SERIES_UID", "Result Series Instance UID", str(number),
                             obj["series_instance_uid"]))
    for index, (value_type, code, text, sub_id, value) in enumerate(observations, 1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(index)
        obx.obx_2 = value_type
        obx.obx_3 = f"{code}^{text}^{CODING_SYSTEM}"
        obx.obx_4 = sub_id
        obx.obx_5 = escape(value)
        obx.obx_11 = status
    return message


def judge_ack(raw: bytes, expected_control_id: str) -> SendOutcome:
    """The outcome of the peer's answer to one ORU (see the module docstring)."""
    try:
        ack = parse_message(raw.decode("utf-8", "replace").strip("\r\n"), find_groups=False)
        code = ack.msa.msa_1.value
        acknowledged = ack.msa.msa_2.value
    except (HL7apyException, AttributeError, IndexError, ValueError) as exc:
        return SendOutcome("retry", f"unreadable acknowledgement: {type(exc).__name__}")
    text = ""
    with contextlib.suppress(HL7apyException, AttributeError, IndexError):  # MSA-3 (text message) is optional
        text = ack.msa.msa_3.value
    detail = f"ACK {code}" + (f": {text[:200]}" if text else "")
    if acknowledged != expected_control_id:
        return SendOutcome("retry", f"{detail} for control id {acknowledged!r}, not {expected_control_id!r}")
    if code in ("AA", "CA"):
        return SendOutcome("sent")
    if code in ("AR", "CR"):
        return SendOutcome("failed", f"rejected ({detail})")
    return SendOutcome("retry", f"application error ({detail})")


class Hl7Notifier:
    """Sends each event as an ORU^R01 to the MLLP listener at ``host:port``, one connection per message."""

    def __init__(self, config: NotificationConfig) -> None:
        self._config = config

    def send(self, event: Mapping[str, Any], facts: StudyFacts) -> SendOutcome:
        message = build_oru(event, facts, self._config)
        try:
            answer = exchange(self._config.host, self._config.port, message.to_er7().encode("utf-8"),
                              self._config.timeout_s)
        except MllpError as exc:
            return SendOutcome("retry", str(exc))
        return judge_ack(answer, message.msh.msh_10.value)

    def close(self) -> None:
        """Nothing kept open between messages."""
