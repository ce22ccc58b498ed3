"""Association negotiation for the receiver's acceptor: who may associate, and on which presentation contexts.

The A-ASSOCIATE PDUs are decoded and encoded by pynetdicom's PDU classes and
the presentation contexts negotiated by its ``negotiate_as_acceptor`` (the
library's tested ACSE code); the policy is ScanStream's: a calling AE bound to
host addresses is refused (1, 1, 3) from any other, then, as pynetdicom's own
acceptor ranks them, the association limit or a low disk (2, 3, 2) over a wrong
called AE (1, 1, 7) over a calling AE not on the allow-list (1, 1, 3).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from engine.outputs.uids import SCANSTREAM_UID_ROOT
from engine.receiver.dimse import A_ASSOCIATE_RQ as A_ASSOCIATE_RQ_TYPE
from engine.receiver.statuses import (
    CALLED_AE_NOT_RECOGNISED,
    CALLING_AE_NOT_RECOGNISED,
    LOCAL_LIMIT_EXCEEDED,
    Rejection,
)

APPLICATION_CONTEXT_NAME = UID("1.2.840.10008.3.1.1.1")
IMPLEMENTATION_CLASS_UID = UID(SCANSTREAM_UID_ROOT + "1")  # the receiver's acceptor and the spool's file meta
IMPLEMENTATION_VERSION_NAME = "SCANSTREAM_1"


class NegotiationError(ValueError):
    """An A-ASSOCIATE-RQ that cannot be decoded (the message names no values)."""


@dataclass(frozen=True)
class AcceptorPolicy:
    """What this acceptor answers to: its AE title, the calling AEs it admits, its contexts and maximum PDU."""

    ae_title: str
    contexts: list[PresentationContext]
    max_pdu: int
    calling_hosts: dict[str, set[str]] = field(default_factory=dict)  # empty: any calling AE


@dataclass(frozen=True)
class AssociationInfo:
    """Who is on the other end of one association (AE titles and address: what logs and the audit trail carry)."""

    calling_ae: str
    called_ae: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Accepted:
    """A negotiated association: the A-ASSOCIATE-AC to send and the accepted contexts by ID."""

    pdu: bytes
    abstract_syntaxes: dict[int, str]
    transfer_syntaxes: dict[int, str]


def decode_request(body: bytes | bytearray) -> A_ASSOCIATE:
    """The A-ASSOCIATE (request) primitive of an A-ASSOCIATE-RQ PDU body."""
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(struct.pack(">BBL", A_ASSOCIATE_RQ_TYPE, 0, len(body)) + bytes(body))
        return pdu.to_primitive()
    except (ValueError, IndexError, struct.error, TypeError, KeyError) as exc:
        raise NegotiationError(f"A-ASSOCIATE-RQ cannot be decoded ({type(exc).__name__})") from exc


def info_of(request: A_ASSOCIATE, host: str, port: int) -> AssociationInfo:
    """The peer's AE titles (spaces stripped) and address."""
    return AssociationInfo(str(request.calling_ae_title).strip(), str(request.called_ae_title).strip(), host, port)


def rejection(info: AssociationInfo, policy: AcceptorPolicy, over_limit: bool) -> Rejection | None:
    """Why this association is refused, or None to accept it (precedence in the module docstring)."""
    hosts = policy.calling_hosts.get(info.calling_ae)
    if hosts and info.host not in hosts:
        return CALLING_AE_NOT_RECOGNISED
    if over_limit:
        return LOCAL_LIMIT_EXCEEDED
    if info.called_ae != policy.ae_title.strip():
        return CALLED_AE_NOT_RECOGNISED
    if policy.calling_hosts and info.calling_ae not in policy.calling_hosts:
        return CALLING_AE_NOT_RECOGNISED
    return None


def reject_pdu(refusal: Rejection) -> bytes:
    """The A-ASSOCIATE-RJ carrying ``refusal``."""
    primitive = A_ASSOCIATE()
    primitive.result = int(refusal.result)
    primitive.result_source = int(refusal.source)
    primitive.diagnostic = int(refusal.reason)
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def accept(request: A_ASSOCIATE, policy: AcceptorPolicy) -> Accepted:
    """Negotiate the presentation contexts and roles; the A-ASSOCIATE-AC answers every proposed context.

    The receiver performs one operation at a time: a proposed asynchronous
    operations window is answered (1, 1). Extended negotiation and user
    identity items get no answer (both optional for the acceptor).
    """
    roles = {item.sop_class_uid: (item.scu_role, item.scp_role) for item in request.user_information
             if isinstance(item, SCP_SCU_RoleSelectionNegotiation)}
    results, role_replies = negotiate_as_acceptor(request.presentation_context_definition_list, policy.contexts,
                                                  roles)
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = policy.max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    user_information: list = [maximum, implementation, version, *role_replies]
    if any(isinstance(item, AsynchronousOperationsWindowNegotiation) for item in request.user_information):
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 1
        window.maximum_number_operations_performed = 1
        user_information.append(window)
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = request.calling_ae_title
    primitive.called_ae_title = request.called_ae_title
    primitive.result = 0x00
    primitive.result_source = 0x01
    primitive.presentation_context_definition_results_list = results
    primitive.user_information = user_information
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)
    accepted = [context for context in results if context.result == 0x00]
    return Accepted(pdu.encode(), {int(c.context_id): str(c.abstract_syntax) for c in accepted},
                    {int(c.context_id): str(c.transfer_syntax[0]) for c in accepted})
