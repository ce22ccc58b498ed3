"""The receiver's acceptor on a socket pair: negotiation, requests, and every way an association ends.

The requestor side is written PDU by PDU here (pynetdicom's PDU classes for the
A-ASSOCIATE-RQ), so that what no well-behaved client sends can be sent too.
Real clients (DCMTK storescu, pynetdicom) are in test_scp.py.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

from engine.receiver.acse import (
    IMPLEMENTATION_CLASS_UID,
    AcceptorPolicy,
    AssociationInfo,
    NegotiationError,
    accept,
    decode_request,
    rejection,
)
from engine.receiver.association import Association, StoreRequest, Timeouts
from engine.receiver.dimse import (
    C_ECHO_RQ,
    C_STORE_RQ,
    COMMAND_DATASET_TYPE,
    COMMAND_FIELD,
    MESSAGE_ID,
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    STATUS,
    encode_command,
    presentation_data_values,
    read_pdu,
)
from engine.receiver.scp import supported_contexts
from engine.receiver.statuses import (
    CALLED_AE_NOT_RECOGNISED,
    CALLING_AE_NOT_RECOGNISED,
    LOCAL_LIMIT_EXCEEDED,
)

AET = "SCANSTREAM"
SOP = "1.2.3.4.5"
CT_CONTEXT, ECHO_CONTEXT, UNKNOWN_CONTEXT = 1, 3, 5


def context(context_id: int | None, abstract: str, *syntaxes: str) -> PresentationContext:
    item = PresentationContext()
    if context_id is not None:
        item.context_id = context_id
    item.abstract_syntax, item.transfer_syntax = abstract, list(syntaxes)
    return item


def request_primitive(calling: str = "CT1", called: str = AET, extra: tuple = ()) -> A_ASSOCIATE:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = calling, called
    primitive.presentation_context_definition_list = [
        context(CT_CONTEXT, CTImageStorage, ExplicitVRLittleEndian),
        context(ECHO_CONTEXT, Verification, ImplicitVRLittleEndian),
        context(UNKNOWN_CONTEXT, "1.2.3.999", ExplicitVRLittleEndian)]
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.3"
    primitive.user_information = [maximum, implementation, *extra]
    return primitive


def request_pdu(**kwargs: object) -> bytes:
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(request_primitive(**kwargs))  # type: ignore[arg-type]
    return pdu.encode()


POLICY = AcceptorPolicy(AET, supported_contexts(), 1 << 20, {"CT1": set(), "CT2": {"10.0.0.5"}})


def test_rejections_rank_as_pynetdicoms_acceptor_ranks_them() -> None:
    def why(calling: str, called: str = AET, host: str = "127.0.0.1", over_limit: bool = False) -> object:
        return rejection(AssociationInfo(calling, called, host, 1), POLICY, over_limit)

    assert why("CT1") is None and why("CT2", host="10.0.0.5") is None
    assert why("CT2") == CALLING_AE_NOT_RECOGNISED  # bound to another host: before anything else
    assert why("CT2", over_limit=True) == CALLING_AE_NOT_RECOGNISED
    assert why("STRANGER", "NOTME", over_limit=True) == LOCAL_LIMIT_EXCEEDED
    assert why("STRANGER", "NOTME") == CALLED_AE_NOT_RECOGNISED
    assert why("STRANGER") == CALLING_AE_NOT_RECOGNISED
    assert rejection(AssociationInfo("ANYONE", AET, "h", 1), AcceptorPolicy(AET, [], 0), False) is None


def test_accept_answers_every_context_and_the_user_information() -> None:
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid, role.scu_role, role.scp_role = CTImageStorage, True, False
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked, window.maximum_number_operations_performed = 5, 5
    policy = AcceptorPolicy(AET, [context(None, CTImageStorage, JPEGBaseline8Bit, ExplicitVRLittleEndian),
                                  context(None, Verification, ImplicitVRLittleEndian)], 65536)
    accepted = accept(decode_request(request_pdu(extra=(window,))[6:]), policy)
    assert accepted.abstract_syntaxes == {CT_CONTEXT: CTImageStorage, ECHO_CONTEXT: Verification}
    assert accepted.transfer_syntaxes == {CT_CONTEXT: ExplicitVRLittleEndian, ECHO_CONTEXT: ImplicitVRLittleEndian}
    answer = A_ASSOCIATE_AC()
    answer.decode(accepted.pdu)
    primitive = answer.to_primitive()
    results = {c.context_id: c.result for c in primitive.presentation_context_definition_results_list}
    assert results == {CT_CONTEXT: 0, ECHO_CONTEXT: 0, UNKNOWN_CONTEXT: 3}  # 3: abstract syntax not supported
    assert primitive.maximum_length_received == 65536
    assert primitive.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    (reply,) = [i for i in primitive.user_information if isinstance(i, AsynchronousOperationsWindowNegotiation)]
    assert (reply.maximum_number_operations_invoked, reply.maximum_number_operations_performed) == (1, 1)
    roles = A_ASSOCIATE_RQ()
    roles.decode(request_pdu(extra=(role,)))
    assert accept(roles.to_primitive(), policy).abstract_syntaxes[CT_CONTEXT] == CTImageStorage


def test_a_request_that_cannot_be_decoded_is_named() -> None:
    with pytest.raises(NegotiationError):
        decode_request(b"\x00\x01\x00\x00" + b"\xff" * 10)


@dataclass
class Recorder:
    """The store callable and the association events, as the SCP would wire them."""

    status: int = 0
    stored: list[StoreRequest] = field(default_factory=list)
    events: list[tuple[str, str, bool | None]] = field(default_factory=list)

    def store(self, request: StoreRequest) -> int:
        self.stored.append(request)
        return self.status

    def accepted(self, info: AssociationInfo) -> None:
        self.events.append(("accepted", info.calling_ae, None))

    def rejected(self, info: AssociationInfo) -> None:
        self.events.append(("rejected", info.calling_ae, None))

    def ended(self, info: AssociationInfo, released: bool) -> None:
        self.events.append(("ended", info.calling_ae, released))


@dataclass
class Peer:
    """The requestor's end of the socket pair, and the acceptor's thread."""

    connection: socket.socket
    recorder: Recorder
    thread: threading.Thread

    def send(self, data: bytes) -> None:
        self.connection.sendall(data)

    def receive(self) -> tuple[int, bytes]:
        pdu_type, body = read_pdu(self.connection, 0)
        return pdu_type, bytes(body)

    def associate(self, **kwargs: object) -> None:
        self.send(request_pdu(**kwargs))
        assert self.receive()[0] == 0x02

    def finish(self) -> None:
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def peer() -> Iterator[Peer]:
    requestor, acceptor = socket.socketpair()
    recorder = Recorder()
    association = Association(acceptor, "127.0.0.1", 4242, POLICY, recorder.store, recorder,
                              Timeouts(acse=2, network=0.5, dimse=0.5))
    thread = threading.Thread(target=association.run)
    thread.start()
    requestor.settimeout(5)
    with requestor:
        yield Peer(requestor, recorder, thread)
    thread.join(5)


def p_data(context_id: int, *items: tuple[int, bytes]) -> bytes:
    """One P-DATA-TF with value items (control header, fragment)."""
    body = b"".join(struct.pack(">LBB", len(data) + 2, context_id, control) + data for control, data in items)
    return struct.pack(">BBL", 0x04, 0, len(body)) + body


def command(field_value: int, sop_class: str, with_dataset: bool, message_id: int = 9) -> bytes:
    def uid(value: str) -> bytes:
        raw = value.encode()
        return raw + b"\x00" if len(raw) % 2 else raw

    elements = [(COMMAND_FIELD, struct.pack("<H", field_value)), (MESSAGE_ID, struct.pack("<H", message_id)),
                (COMMAND_DATASET_TYPE, struct.pack("<H", 0x0000 if with_dataset else 0x0101)),
                (AFFECTED_SOP_CLASS_UID, uid(sop_class))]
    if field_value == C_STORE_RQ:
        elements.append((AFFECTED_SOP_INSTANCE_UID, uid(SOP)))
    return encode_command(elements)


def status_of(answer: tuple[int, bytes]) -> int:
    pdu_type, body = answer
    assert pdu_type == 0x04
    ((_, is_command, is_last, fragment),) = list(presentation_data_values(body))
    assert is_command and is_last
    raw = bytes(fragment)
    index = raw.index(struct.pack("<HHL", 0, STATUS & 0xFFFF, 2))
    return int(struct.unpack_from("<H", raw, index + 8)[0])


def test_a_store_in_fragments_is_joined_answered_and_released(peer: Peer) -> None:
    peer.associate()
    store = command(C_STORE_RQ, CTImageStorage, True)
    peer.send(p_data(CT_CONTEXT, (0x01, store[:10])) + p_data(CT_CONTEXT, (0x03, store[10:]), (0x00, b"abc")))
    peer.send(p_data(CT_CONTEXT, (0x00, b"def"), (0x02, b"gh")))
    assert status_of(peer.receive()) == 0x0000
    (stored,) = peer.recorder.stored
    assert (stored.dataset, stored.sop_class_uid, stored.sop_instance_uid, stored.transfer_syntax) == \
        (b"abcdefgh", CTImageStorage, SOP, ExplicitVRLittleEndian)
    assert stored.peer == AssociationInfo("CT1", AET, "127.0.0.1", 4242)
    peer.send(struct.pack(">BBL", 0x05, 0, 4) + bytes(4))
    assert peer.receive() == (0x06, bytes(4))
    peer.connection.close()
    peer.finish()
    assert peer.recorder.events == [("accepted", "CT1", None), ("ended", "CT1", True)]


def test_the_handlers_status_is_the_answer(peer: Peer) -> None:
    peer.recorder.status = 0xA700
    peer.associate()
    peer.send(p_data(CT_CONTEXT, (0x03, command(C_STORE_RQ, CTImageStorage, True)), (0x02, b"x")))
    assert status_of(peer.receive()) == 0xA700


@pytest.mark.parametrize(("context_id", "field_value", "sop_class", "status"), [
    (ECHO_CONTEXT, C_ECHO_RQ, Verification, 0x0000),
    (ECHO_CONTEXT, C_STORE_RQ, Verification, 0x0122),  # a store on the Verification context
    (CT_CONTEXT, C_STORE_RQ, "1.2.840.10008.5.1.4.1.1.4", 0x0122),  # an MR store on the CT context
    (CT_CONTEXT, 0x0020, CTImageStorage, 0x0211),  # C-FIND: not an operation this SCP performs
])
def test_requests_other_than_a_matching_store(peer: Peer, context_id: int, field_value: int, sop_class: str,
                                              status: int) -> None:
    peer.associate()
    has_dataset = field_value == C_STORE_RQ
    items = [(0x03, command(field_value, sop_class, has_dataset))] + ([(0x02, b"ds")] if has_dataset else [])
    peer.send(p_data(context_id, *items))
    assert status_of(peer.receive()) == status
    assert peer.recorder.stored == []


def test_a_cancel_gets_no_response_and_the_next_request_is_answered(peer: Peer) -> None:
    peer.associate()
    peer.send(p_data(CT_CONTEXT, (0x03, command(0x0FFF, CTImageStorage, False))))
    peer.send(p_data(ECHO_CONTEXT, (0x03, command(C_ECHO_RQ, Verification, False, message_id=10))))
    answer = peer.receive()
    assert status_of(answer) == 0x0000 and struct.pack("<HHLH", 0, 0x0120, 2, 10) in answer[1]


@pytest.mark.parametrize(("data", "reason"), [
    (p_data(UNKNOWN_CONTEXT, (0x03, b"")), 0x06),  # a context that was not accepted
    (p_data(CT_CONTEXT, (0x02, b"dataset first")), 0x06),
    (p_data(CT_CONTEXT, (0x03, b"\x00\x00\x00\x01\x04\x00\x00\x00\x01")), 0x06),  # a command set cut short
    (struct.pack(">BBL", 0x09, 0, 2) + b"??", 0x01),  # no such PDU type
    (request_pdu(), 0x02),  # a second A-ASSOCIATE-RQ
])
def test_what_cannot_be_taken_in_the_data_phase_is_aborted(peer: Peer, data: bytes, reason: int) -> None:
    peer.associate()
    peer.send(data)
    assert peer.receive() == (0x07, bytes([0, 0, 2, reason]))
    peer.finish()
    assert peer.recorder.events[-1] == ("ended", "CT1", False)


def test_silence_past_the_network_timeout_is_aborted(peer: Peer) -> None:
    peer.associate()
    assert peer.receive() == (0x07, bytes([0, 0, 2, 0]))
    peer.finish()


def test_a_pdu_over_the_limit_closes_the_connection_without_reading_it(peer: Peer) -> None:
    peer.associate()
    peer.send(struct.pack(">BBL", 0x04, 0, (1 << 20) + 1))
    assert peer.connection.recv(100) == b""
    peer.finish()
    assert peer.recorder.events[-1] == ("ended", "CT1", False)


def test_an_abort_from_the_peer_ends_the_association(peer: Peer) -> None:
    peer.associate()
    peer.send(bytes([7, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
    peer.finish()
    assert peer.recorder.events == [("accepted", "CT1", None), ("ended", "CT1", False)]


def test_a_refused_association_gets_its_reject_pdu(peer: Peer) -> None:
    peer.send(request_pdu(called="NOTME"))
    pdu_type, body = peer.receive()
    answer = A_ASSOCIATE_RJ()
    answer.decode(struct.pack(">BBL", pdu_type, 0, len(body)) + body)
    assert (pdu_type, answer.result, answer.source, answer.reason_diagnostic) == (0x03, 1, 1, 7)
    peer.connection.close()
    peer.finish()
    assert peer.recorder.events == [("rejected", "CT1", None)]


def test_a_first_pdu_other_than_a_request_is_aborted(peer: Peer) -> None:
    peer.send(p_data(1, (0x03, b"")))
    assert peer.receive() == (0x07, bytes([0, 0, 2, 2]))
    peer.finish()
    assert peer.recorder.events == []
